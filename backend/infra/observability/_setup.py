"""`init_observability` and the FastAPI hooks: wiring the parts together once per process."""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from . import _metrics, _state, _tracing
from ._config import ObservabilityConfig, load_config
from ._logging import SINK, configure_logging
from ._middleware import MiddlewareOptions, ObservabilityMiddleware
from ._otel import HAS_SDK, instrument_httpx
from ._redact import configure_scrubbing
from ._tracing import shutdown_tracing

_init_lock = threading.Lock()


def init_observability(
    service_name: str | None = None,
    log_level: str | None = None,
    enable_tracing: bool = True,
    enable_metrics: bool = True,
) -> ObservabilityConfig:
    """Set up JSON logging, tracing and metrics for this process. Idempotent.

    Reads the seed's variables and the standard `OTEL_*` ones (see the guide for precedence);
    a bad value raises `ObservabilityConfigError` naming the variable. The first call wins:
    later calls return the configuration already in force.
    """
    with _init_lock:
        current = _state.config()
        if current is not None:
            return current
        config = load_config(service_name, log_level, enable_tracing, enable_metrics)
        configure_scrubbing(config.scrubbing, config.scrub_patterns)
        configure_logging(
            _state.log_resource_fields(config),
            config.log_level,
            client_access_log=config.client_access_log,
            baggage_keys=config.baggage_log_keys,
        )
        _state.set_config(config)
        if config.http_known_methods is not None:
            _metrics.set_known_methods(config.http_known_methods)
        rt = _tracing.setup_tracing(config)
        if rt is not None:
            instrument_httpx()
            atexit.register(shutdown_tracing)
        logging.getLogger(__name__).debug(
            "observability ready",
            extra={
                "tracing": rt is not None,
                "exporting": rt is not None and rt.processor is not None,
                "otlp_endpoint": config.otlp_endpoint,
                "otlp_protocol": config.otlp_protocol,
                "sdk_installed": HAS_SDK,
            },
        )
        return config


def shutdown_observability(timeout_ms: int = 5000) -> None:
    """Flush queued spans and log lines; call before a worker process exits."""
    shutdown_tracing(timeout_ms)
    SINK.flush()


def _options(app: Any) -> MiddlewareOptions:
    """The app's single observability middleware, added on first use."""
    options: MiddlewareOptions | None = getattr(app.state, "observability", None)
    if options is None:
        options = MiddlewareOptions()
        app.state.observability = options
        build = getattr(app, "build_middleware_stack", None)
        if build is None or getattr(app, "middleware_stack", None) is not None:
            # Not a Starlette app, or one already started (Starlette refuses, and says why).
            app.add_middleware(ObservabilityMiddleware, options=options)
        else:
            app.build_middleware_stack = _outermost(build, options)
    return options


def _outermost(build: Any, options: MiddlewareOptions) -> Any:
    """`build_middleware_stack` with our middleware around the whole stack.

    `add_middleware` would put it inside Starlette's `ServerErrorMiddleware`, so the app's
    500 handler and the server's "Exception in ASGI application" line would run after the
    request's span was detached, without its trace id.
    """

    def build_with_observability() -> Any:
        return ObservabilityMiddleware(build(), options=options)

    return build_with_observability


def _disable_native_telemetry(app: Any) -> None:
    """Keep FastAPI's built-in telemetry off: a request must get exactly one SERVER span.

    FastAPI (>= 0.16x) switches its own request spans, operation spans and metrics on as soon
    as a global provider exists. Its settings dict is private; a test pins this behaviour.
    """
    telemetry = getattr(app, "_telemetry", None)
    if isinstance(telemetry, dict):
        telemetry.update(tracing=False, metrics=False, logs=False, operation_spans=False)


def instrument_fastapi(app: Any) -> Any:
    """Trace every request (one SERVER span named `{METHOD} {route}`) and write access lines.

    `/health/*` and `/metrics` are not traced. Incoming W3C `traceparent`/`tracestate`/`baggage`
    continue the caller's trace; outgoing httpx calls carry the trace headers.
    """
    options = _options(app)
    options.tracing = True
    options.access_log = True
    _disable_native_telemetry(app)
    return app


def add_metrics_middleware(app: Any) -> Any:
    """Count and time requests in Prometheus (labels: method, route template, status class).

    `/metrics` is served from the default `REGISTRY` when the app does not define it.
    """
    options = _options(app)
    options.metrics = True
    _disable_native_telemetry(app)
    return app
