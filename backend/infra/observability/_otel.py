"""The one place where the optional OpenTelemetry packages are imported.

Everything else in the library asks this module what is available. Current FastAPI depends on
`opentelemetry-api`, so HTTP services usually have the API; the SDK, the exporters and the
instrumentations are the optional `otel` extra. Workers must run without even the API.
"""

from __future__ import annotations

import enum
import os
from typing import Any

INSTALL_HINT = "install the tracing extra: pip install 'quantum-trader[otel]'"

try:
    from opentelemetry import baggage as otel_baggage
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.propagate import extract as otel_extract
    from opentelemetry.propagate import inject as otel_inject
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.span import DEFAULT_TRACE_STATE

    HAS_API = True
except ImportError:  # pragma: no cover - exercised in a separate interpreter by the tests
    HAS_API = False
    otel_baggage = otel_context = otel_trace = None  # type: ignore[assignment]
    otel_extract = otel_inject = None  # type: ignore[assignment]
    DEFAULT_TRACE_STATE = None  # type: ignore[assignment]

    class SpanKind(enum.Enum):  # type: ignore[no-redef]
        """Stand-in for `opentelemetry.trace.SpanKind` when the API is absent."""

        INTERNAL = 0
        SERVER = 1
        CLIENT = 2
        PRODUCER = 3
        CONSUMER = 4

    class StatusCode(enum.Enum):  # type: ignore[no-redef]
        """Stand-in for `opentelemetry.trace.StatusCode` when the API is absent."""

        UNSET = 0
        OK = 1
        ERROR = 2

    class Status:  # type: ignore[no-redef]
        """Stand-in for `opentelemetry.trace.Status` when the API is absent."""

        def __init__(self, status_code: Any = None, description: str | None = None) -> None:
            self.status_code = status_code
            self.description = description


try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        Sampler,
        TraceIdRatioBased,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    HAS_SDK = HAS_API
except ImportError:
    HAS_SDK = False
    Resource = ReadableSpan = SpanProcessor = TracerProvider = None  # type: ignore[assignment,misc]
    ALWAYS_OFF = ALWAYS_ON = ParentBased = Sampler = TraceIdRatioBased = None  # type: ignore[assignment,misc]
    InstrumentationScope = None  # type: ignore[assignment,misc]


def has_grpc() -> bool:
    """True when grpcio is importable (OTLP over gRPC)."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def opt_in_stable_conventions() -> None:
    """Make the contrib instrumentations emit the stable HTTP and database conventions.

    `OTEL_SEMCONV_STABILITY_OPT_IN` defaults to `http,database` unless the deployment set it;
    without it, httpx CLIENT spans carry the pre-1.20 `http.method`/`http.url` attributes.
    The contrib package reads the variable once, so a reading taken before ours is redone.
    """
    if os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN"):
        return
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http,database"
    try:
        from opentelemetry.instrumentation._semconv import (
            _OpenTelemetrySemanticConventionStability as stability,
        )
    except ImportError:
        return
    with stability._lock:
        stability._initialized = False
    stability._initialize()  # type: ignore[no-untyped-call]


def _scrub_request_url(span: Any, request: Any) -> None:
    """httpx request hook: `url.full` without secret query values (`?token=...`)."""
    from ._redact import scrubber

    if span.is_recording():
        span.set_attribute("url.full", scrubber().url(str(request.url)))


async def _scrub_request_url_async(span: Any, request: Any) -> None:
    _scrub_request_url(span, request)


def instrument_httpx() -> bool:
    """Make every httpx client inject trace headers (and record a CLIENT span).

    Returns False when the httpx instrumentation is not installed.
    """
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:
        return False
    opt_in_stable_conventions()
    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(
            request_hook=_scrub_request_url, async_request_hook=_scrub_request_url_async
        )
    return True


__all__ = [
    "ALWAYS_OFF",
    "ALWAYS_ON",
    "DEFAULT_TRACE_STATE",
    "HAS_API",
    "HAS_SDK",
    "INSTALL_HINT",
    "InstrumentationScope",
    "ParentBased",
    "ReadableSpan",
    "Resource",
    "Sampler",
    "SpanKind",
    "SpanProcessor",
    "Status",
    "StatusCode",
    "TraceIdRatioBased",
    "TracerProvider",
    "has_grpc",
    "instrument_httpx",
    "otel_baggage",
    "otel_context",
    "otel_extract",
    "otel_inject",
    "otel_trace",
]
