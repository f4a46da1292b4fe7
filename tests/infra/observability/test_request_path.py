"""The per-request path of the HTTP middleware: the work every request pays, sampled or not.

Counted in Python function calls into the library and OpenTelemetry (deterministic, unlike
time): each call is a frame the event loop pays on every request of every service. The
content the request leaves behind (access line, metric, context for the app) is checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace

from backend.infra.observability import add_metrics_middleware, instrument_fastapi
from backend.infra.observability._logging import SINK
from backend.infra.observability._metrics import REGISTRY

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00".encode()

LIBRARY = os.sep + os.path.join("backend", "infra", "observability") + os.sep
OTEL = os.sep + "opentelemetry" + os.sep


def make_app(seen: list[Any]) -> FastAPI:
    app = FastAPI()
    instrument_fastapi(app)
    add_metrics_middleware(app)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        seen.append(trace.get_current_span().get_span_context())
        return {"ok": True}

    return app


async def request(app: FastAPI, traceparent: bytes) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ping",
        "raw_path": b"/ping",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api"), (b"traceparent", traceparent)],
        "server": ("127.0.0.1", 8000),
        "client": ("203.0.113.9", 5555),
    }
    await app(scope, receive, send)
    return status


def library_calls(app: FastAPI, traceparent: bytes) -> list[str]:
    """The library's Python functions one request calls, and OpenTelemetry's that the library
    calls (not FastAPI's own), after a first request has warmed the caches."""
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        name = frame.f_code.co_filename
        caller = frame.f_back.f_code.co_filename if frame.f_back is not None else ""
        if LIBRARY in name or (OTEL in name and LIBRARY in caller):
            calls.append(f"{os.path.basename(name)}:{frame.f_code.co_name}")

    async def measured() -> None:
        assert await request(app, traceparent) == 200
        sys.setprofile(profile)
        try:
            assert await request(app, traceparent) == 200
        finally:
            sys.setprofile(None)
        # The request's context was restored on the way out.
        assert trace.get_current_span() is trace.INVALID_SPAN

    asyncio.run(measured())
    return calls


def access_lines(buffer: Any) -> Iterator[dict[str, Any]]:
    SINK.flush()
    for line in buffer.getvalue().splitlines():
        fields = json.loads(line)
        if fields["logger"] == "access":
            yield fields


def test_an_unsampled_request_costs_few_library_calls(log_lines) -> None:  # type: ignore[no-untyped-def]
    """An unsampled request still gets its ids, its context, its metric and its access line,
    in at most 17 Python calls into the library and OpenTelemetry (33 before the context was
    set directly and the span context read as the tuple it is)."""
    seen: list[Any] = []
    app = make_app(seen)
    calls = library_calls(app, UNSAMPLED)
    assert len(calls) <= 17, calls
    # What the calls are for is all still there: the app ran inside the caller's trace, not
    # sampled, and the access line carries that trace.
    ctx = seen[-1]
    assert f"{ctx.trace_id:032x}" == TRACE_ID and not ctx.trace_flags.sampled
    lines = list(access_lines(log_lines))
    assert len(lines) == 2
    assert lines[-1]["trace_id"] == TRACE_ID
    assert lines[-1]["span_id"] == f"{ctx.span_id:016x}"
    assert lines[-1]["trace_flags"] == "00"
    assert lines[-1]["http.route"] == "/ping" and lines[-1]["http.response.status_code"] == 200
    assert REGISTRY.get_sample_value(
        "http_server_request_duration_seconds_count",
        {
            "http_request_method": "GET",
            "http_route": "/ping",
            "http_response_status_code": "200",
            "url_scheme": "http",
            "error_type": "",
        },
    )
