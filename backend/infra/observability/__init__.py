"""Observability for Quantum Trader services: JSON logs, traces, Prometheus metrics, health.

The seed's API, unchanged::

    init_observability(service_name="risk-safety", log_level="INFO",
                       enable_tracing=True, enable_metrics=True)
    logger = get_logger(__name__)
    instrument_fastapi(app)
    add_metrics_middleware(app)

Works with or without the OpenTelemetry packages installed (tracing is then a no-op).
See docs/OBSERVABILITY_README.md for every variable and metric.
"""

from __future__ import annotations

from ._config import ObservabilityConfig
from ._errors import ObservabilityConfigError, ObservabilityError
from ._health import ReadinessCheck, add_health_endpoints, add_readiness_check
from ._logging import BoundLogger, get_logger, uvicorn_log_config
from ._otel import SpanKind, Status, StatusCode
from ._redact import redact_text, redact_url
from ._setup import (
    add_metrics_middleware,
    init_observability,
    instrument_fastapi,
    shutdown_observability,
)
from ._tracing import (
    CURRENT_SPAN,
    activate_span,
    current_traceparent,
    extract_trace_context,
    force_flush,
    get_tracer,
    inject_trace_context,
    lean_span,
    links_from_traceparent,
    new_trace_context,
    record_error,
    span_context_from_traceparent,
    start_lean_span,
    use_trace_context,
)

__all__ = [
    "CURRENT_SPAN",
    "BoundLogger",
    "ObservabilityConfig",
    "ObservabilityConfigError",
    "ObservabilityError",
    "ReadinessCheck",
    "SpanKind",
    "Status",
    "StatusCode",
    "activate_span",
    "add_health_endpoints",
    "add_metrics_middleware",
    "add_readiness_check",
    "current_traceparent",
    "extract_trace_context",
    "force_flush",
    "get_logger",
    "get_tracer",
    "init_observability",
    "inject_trace_context",
    "instrument_fastapi",
    "lean_span",
    "links_from_traceparent",
    "new_trace_context",
    "record_error",
    "redact_text",
    "redact_url",
    "shutdown_observability",
    "span_context_from_traceparent",
    "start_lean_span",
    "use_trace_context",
    "uvicorn_log_config",
]
