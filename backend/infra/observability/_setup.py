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
from ._otel import HAS_SDK, INSTALL_HINT, instrument_httpx
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
        handler = configure_logging(
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
        _start_signal_exports(config, handler)
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
    """Flush queued spans, log records and metrics; call before a worker process exits."""
    shutdown_tracing(timeout_ms)
    _stop_signal_exports(timeout_ms)
    SINK.flush()
    _metrics.mark_process_dead()  # multiprocess mode only: this worker's live gauges go


# The OTLP metric pusher and log queue, when started.
_SIGNAL_EXPORTS: list[Any] = []


def _start_signal_exports(config: ObservabilityConfig, handler: Any) -> None:
    """OTLP metrics and logs beside Prometheus and stdout, when an endpoint is configured."""
    if config.otlp_metrics_endpoint is None and config.otlp_logs_endpoint is None:
        return
    try:
        if not HAS_SDK:
            raise ImportError("opentelemetry-sdk")
        import opentelemetry.proto  # noqa: F401 - the encoders need it

        from . import _export, _signals
    except ImportError:  # the SDK and opentelemetry-proto are the tracing extra
        logging.getLogger(__name__).warning(
            "OTLP metrics and logs need the OpenTelemetry packages; %s", INSTALL_HINT
        )
        return
    tls = _export.TlsFiles(
        config.otlp_certificate, config.otlp_client_key, config.otlp_client_certificate
    )
    resource = _tracing.resource_attributes(config)
    scope = (_tracing.LIBRARY_SCOPE, config.service_version)

    def transport(endpoint: str, grpc_method: str) -> Any:
        return _export.make_transport(
            endpoint,
            config.otlp_protocol,
            config.otlp_insecure,
            config.otlp_headers,
            config.otlp_timeout_s,
            config.otlp_compression,
            tls,
            grpc_method,
        )

    if config.otlp_metrics_endpoint is not None:
        _SIGNAL_EXPORTS.append(
            _signals.MetricsPusher(
                transport(config.otlp_metrics_endpoint, _export.GrpcTransport.METRICS_METHOD),
                resource,
                scope,
                config.metric_export_interval_ms / 1000.0,
                config.otlp_timeout_s,
            )
        )
    if config.otlp_logs_endpoint is not None:
        queue = _signals.make_log_queue(
            transport(config.otlp_logs_endpoint, _export.GrpcTransport.LOGS_METHOD),
            resource,
            scope,
            config.otlp_timeout_s,
        )
        handler.otlp = queue
        _state.OTLP_LOGS[0] = queue
        _SIGNAL_EXPORTS.append(queue)
    atexit.register(_stop_signal_exports)


def _stop_signal_exports(timeout_ms: int = 5000) -> None:
    SINK.flush()  # access lines still waiting go to the log queue before it stops
    _state.OTLP_LOGS[0] = None
    while _SIGNAL_EXPORTS:
        exporter = _SIGNAL_EXPORTS.pop()
        if hasattr(exporter, "begin_shutdown"):
            exporter.shutdown(timeout_ms)
        else:
            exporter.shutdown(min(2.0, timeout_ms / 1000.0))


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
