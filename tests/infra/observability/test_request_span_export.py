"""The request's SERVER span on its way to a sole export queue: its attributes are made only
when something reads or changes them, and the exporter encodes them once per distinct request
and response, to the same OTLP bytes as the `ReadableSpan` copy other processors get."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from backend.infra.observability import _tracing, instrument_fastapi
from backend.infra.observability._export import ExportQueue, encode_spans
from backend.infra.observability._redact import configure_scrubbing


class Transport:
    def send(self, payload: bytes, timeout_s: float) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


@pytest.fixture
def sole_queue(span_exporter) -> Iterator[ExportQueue]:  # type: ignore[no-untyped-def]
    """The export queue as the provider's only processor (the capture taken out meanwhile)."""
    rt = _tracing.runtime()
    assert rt is not None
    queue = ExportQueue(Transport(), delay_ms=60_000)
    saved = (rt.processor, rt.provider._active_span_processor._span_processors)
    rt.processor = queue
    rt.provider._active_span_processor._span_processors = (queue,)
    try:
        yield queue
    finally:
        rt.processor, rt.provider._active_span_processor._span_processors = saved
        queue.shutdown(1000)


def make_app() -> FastAPI:
    app = FastAPI()
    instrument_fastapi(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/tagged")
    async def tagged() -> dict[str, bool]:
        trace.get_current_span().set_attribute("app.customer", "c-1")
        return {"ok": True}

    return app


def call(
    app: FastAPI, method: str, path: str, query: bytes = b"", headers: tuple[Any, ...] = ()
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None: ...

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "server": ("127.0.0.1", 8000),
        "client": ("203.0.113.9", 5555),
    }
    asyncio.run(app(scope, receive, send))


def copy_of(span: Any) -> ReadableSpan:
    """What a processor other than the sole export queue is given (attributes made)."""
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=dict(span.attributes),
        events=list(span._events),
        links=list(span._links),
        kind=span.kind,
        status=span._status,
        start_time=span.start_time,
        end_time=span._end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def test_a_request_span_is_queued_unmade_and_encodes_as_its_copy(sole_queue) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    agent = (b"user-agent", b"curl/8")
    call(app, "GET", "/items/1", b"token=s3cret&page=2", ((b"host", b"api:8443"), agent))
    call(app, "GET", "/items/1", b"token=s3cret&page=2", ((b"host", b"api:8443"), agent))
    call(app, "GET", "/items/2", headers=((b"x-forwarded-host", b"shop, proxy"),))
    call(app, "PROPFIND", "/items/3")  # an unknown method, no Host header: the socket's address
    call(app, "GET", "/nowhere")  # no route
    spans = list(sole_queue._queue)
    assert len(spans) == 5
    # Nothing read them yet: the attributes are still a description, not a dict.
    assert all(span._lazy is not None for span in spans)
    encoded = [encode_spans([span]) for span in spans]
    assert encoded[0] != encoded[1]  # other ids; the same cached attributes
    for span, ours in zip(spans, encoded, strict=True):
        assert ours == encode_spans([copy_of(span)])
    assert dict(spans[0].attributes) == {
        "http.request.method": "GET",
        "url.path": "/items/1",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "api",
        "server.port": 8443,
        "url.query": "token=REDACTED&page=2",
        "user_agent.original": "curl/8",
        "client.address": "203.0.113.9",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }
    assert spans[0].name == "GET /items/{item_id}"
    assert spans[2].attributes["server.address"] == "shop"
    assert spans[2].attributes["server.port"] == 80
    assert spans[3].name == "HTTP /items/{item_id}"
    assert spans[3].attributes["http.request.method"] == "_OTHER"
    assert spans[3].attributes["http.request.method_original"] == "PROPFIND"
    assert spans[3].attributes["server.address"] == "127.0.0.1"
    assert spans[4].name == "GET"
    assert "http.route" not in spans[4].attributes
    assert spans[4].attributes["http.response.status_code"] == 404


def test_attributes_the_app_sets_are_kept_in_order(sole_queue) -> None:  # type: ignore[no-untyped-def]
    call(make_app(), "GET", "/tagged", headers=((b"host", b"api"),))
    (span,) = sole_queue._queue
    assert span._lazy is None  # the app's attribute made them, in the request's order
    assert list(span.attributes)[-3:] == [
        "app.customer",
        "http.route",
        "http.response.status_code",
    ]
    assert encode_spans([span]) == encode_spans([copy_of(span)])


def test_a_count_limit_under_the_request_attributes_still_applies(sole_queue) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    saved = rt.max_attributes
    rt.max_attributes = 3
    try:
        call(make_app(), "GET", "/items/1", headers=((b"host", b"api"),))
    finally:
        rt.max_attributes = saved
    (span,) = sole_queue._queue
    assert span._lazy is None
    assert list(span.attributes) == ["http.request.method", "url.path", "url.scheme"]


def test_new_scrubbing_rules_reach_request_attributes_encoded_before(sole_queue) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    query = b"account_number=12345"
    call(app, "GET", "/items/1", query, ((b"host", b"api"),))
    (first,) = sole_queue._queue
    assert b"12345" in encode_spans([first])
    try:
        configure_scrubbing(True, ("account[._]?number",))
        call(app, "GET", "/items/1", query, ((b"host", b"api"),))
        second = sole_queue._queue[-1]
        assert second._lazy == first._lazy  # the same request: its encoding was cached
        assert b"12345" not in encode_spans([second])
        assert encode_spans([second]) == encode_spans([copy_of(second)])
    finally:
        configure_scrubbing(True)


def test_queued_request_spans_decode_as_the_reference_encodes_them(sole_queue) -> None:  # type: ignore[no-untyped-def]
    """Spans of every length prefix size (one, two and three varint bytes), with a remote
    parent and without, read back as the OpenTelemetry exporter's own encoding."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    app = make_app()
    parent = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    call(app, "GET", "/items/1", headers=((b"host", b"api"), parent))
    call(app, "GET", "/items/2", headers=((b"host", b"api"), (b"user-agent", b"a" * 20_000)))
    spans = list(sole_queue._queue)
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = ExportTraceServiceRequest.FromString(
        reference([copy_of(span) for span in spans]).SerializeToString()
    )
    for request in (ours, theirs):
        for span in request.resource_spans[0].scope_spans[0].spans:
            # The reference leaves the W3C flag bits out (the specification allows both) and
            # writes an UNSET status as an empty message.
            span.flags &= ~0xFF
            if span.status.code == 0 and not span.status.message:
                span.ClearField("status")
    assert ours == theirs
    decoded = ours.resource_spans[0].scope_spans[0].spans
    assert decoded[0].parent_span_id.hex() == "b7ad6b7169203331"
    assert len(decoded[1].SerializeToString()) > 0x4000
