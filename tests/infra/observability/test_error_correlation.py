"""A failed request's error lines carry its trace: uvicorn's traceback and the app's handler."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind, StatusCode

from backend.infra.observability import get_logger, instrument_fastapi
from backend.infra.observability._logging import SINK


@contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """`app` under a real uvicorn server on an ephemeral port, in a thread of this process."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def lines(buffer) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    SINK.flush()
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def the_server_span(exporter):  # type: ignore[no-untyped-def]
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def test_uvicorns_exception_line_carries_the_requests_trace(span_exporter, log_lines) -> None:  # type: ignore[no-untyped-def]
    app = FastAPI()
    instrument_fastapi(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    with serving(app) as port:
        assert get(port, "/boom") == 500
    span = the_server_span(span_exporter)
    (line,) = [x for x in lines(log_lines) if "Exception in ASGI application" in str(x["message"])]
    assert line["level"] == "ERROR"
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"
    assert line["exception"]["type"] == "RuntimeError"  # type: ignore[index]


def test_the_apps_own_500_handler_logs_inside_the_trace(span_exporter, log_lines) -> None:  # type: ignore[no-untyped-def]
    log = get_logger("app.errors")

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", path=request.url.path)
        return JSONResponse({"detail": "try later"}, status_code=503)

    app = FastAPI(exception_handlers={Exception: on_error})
    instrument_fastapi(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    with serving(app) as port:
        assert get(port, "/boom") == 503
    span = the_server_span(span_exporter)
    (line,) = [x for x in lines(log_lines) if x["logger"] == "app.errors"]
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"
    # The span reports what the client got, and the error that caused it.
    assert span.attributes["http.response.status_code"] == 503
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.status.status_code is StatusCode.ERROR
