"""The benchmark's server: one trivial endpoint under one of several observability set-ups.

    python -m bench.http_app CONFIG PORT
    python -m bench.http_app count CONFIG N     # N requests in-process, for instruction counts

CONFIG is one of `bare`, `ours` (this project's library; sampling from TRACE_SAMPLE_RATE),
`fastapi_native` (FastAPI's built-in telemetry with an SDK provider exporting over OTLP/HTTP),
`usual_stack` (opentelemetry-instrumentation-fastapi + prometheus-fastapi-instrumentator + a
JSON access line through stdlib logging).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import uvicorn
from fastapi import FastAPI


def _sdk_provider() -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    endpoint = os.environ["OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def _add_route(app: FastAPI) -> None:
    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}


def build(config: str) -> FastAPI:
    if config == "bare":
        app = FastAPI()
    elif config == "ours":
        from backend.infra.observability import (
            add_metrics_middleware,
            init_observability,
            instrument_fastapi,
        )

        init_observability("bench", "INFO", enable_tracing=True, enable_metrics=True)
        app = FastAPI()
        instrument_fastapi(app)
        add_metrics_middleware(app)
    elif config == "fastapi_native":
        _sdk_provider()
        app = FastAPI()
    elif config == "usual_stack":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from prometheus_fastapi_instrumentator import Instrumentator

        _sdk_provider()
        app = FastAPI()
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("bench.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False

        @app.middleware("http")
        async def json_access_log(request, call_next):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            response = await call_next(request)
            access.info(
                json.dumps(
                    {
                        "time": time.time(),
                        "level": "INFO",
                        "message": f"{request.method} {request.url.path} {response.status_code}",
                        "duration_ms": (time.perf_counter() - started) * 1000,
                    }
                )
            )
            return response

        Instrumentator().instrument(app).expose(app)
        FastAPIInstrumentor.instrument_app(app)
    else:
        raise SystemExit(f"unknown configuration {config!r}")
    _add_route(app)
    return app


def count(config: str, n: int) -> None:
    """N `/ping` requests through the app in-process (ASGI, no sockets), after 200 to warm it
    up, with the queued spans encoded and the access lines formatted in this process every 500
    requests. Run it under `valgrind --tool=callgrind` with N and with 0 (PYTHONHASHSEED=0):
    the difference over N is the instructions of one request, export and log line included.
    """
    import asyncio

    os.environ.setdefault("OTLP_ENDPOINT", "http://127.0.0.1:9")  # never sent to
    os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "100000000")
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", "100000")
    os.environ.setdefault("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100000")
    os.environ.setdefault("SERVICE_NAME", "bench")
    app = build(config)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        return None

    def scope() -> dict[str, object]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": "/ping",
            "raw_path": b"/ping",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"user-agent", b"loadgen"),
                (b"accept", b"*/*"),
            ],
            "state": {},
        }

    def export() -> None:
        if config != "ours":
            return
        from backend.infra.observability import _tracing
        from backend.infra.observability._logging import SINK

        rt = _tracing.runtime()
        queue = rt.processor._queue if rt is not None and rt.processor is not None else None
        if queue:
            spans = list(queue)
            queue.clear()
            rt.processor._encode(spans)  # type: ignore[union-attr]
        for deferred in SINK._deferred:
            deferred.drain()

    async def run() -> None:
        for _ in range(200):
            await app(scope(), receive, send)
        export()
        for i in range(n):
            await app(scope(), receive, send)
            if not (i + 1) % 500:
                export()
        export()

    asyncio.run(run())


def main() -> None:
    if sys.argv[1] == "count":
        count(sys.argv[2], int(sys.argv[3]))
        return
    config, port = sys.argv[1], int(sys.argv[2])
    app = build(config)
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
