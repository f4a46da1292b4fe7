"""One SERVER span per request: its name, attributes, parent, baggage, errors and exclusions."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from opentelemetry import baggage
from opentelemetry.trace import SpanKind, StatusCode

from backend.infra.observability import (
    add_health_endpoints,
    add_metrics_middleware,
    get_tracer,
    instrument_fastapi,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
seen_baggage: dict[str, object] = {}


def make_app(metrics: bool = True) -> FastAPI:
    app = FastAPI()
    instrument_fastapi(app)
    if metrics:
        add_metrics_middleware(app)
    add_health_endpoints(app)
    tracer = get_tracer("tests")

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        with tracer.start_as_current_span("load_order") as span:
            span.set_attribute("order.id", order_id)
        seen_baggage.update(baggage.get_all())
        return {"order_id": order_id}

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("database exploded")

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/sync")
    def sync_route() -> dict[str, bool]:
        with tracer.start_as_current_span("sync_work"):
            pass
        return {"ok": True}

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app(), raise_server_exceptions=False)


def server_spans(exporter) -> list:  # type: ignore[no-untyped-def]
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def test_one_server_span_named_by_route_template(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/orders/42?verbose=1").status_code == 200
    (span,) = server_spans(span_exporter)
    assert span.name == "GET /orders/{order_id}"
    attrs = dict(span.attributes)
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/orders/{order_id}"
    assert attrs["url.path"] == "/orders/42"
    assert attrs["url.scheme"] == "http"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "testserver"
    assert span.status.status_code is StatusCode.UNSET


def test_only_one_server_span_even_with_fastapi_builtin_telemetry(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    # A global SDK provider is installed (the suite's), which is what switches FastAPI's own
    # telemetry on; the library must keep it off so nothing is traced twice.
    client.get("/orders/1")
    spans = span_exporter.get_finished_spans()
    assert len(server_spans(span_exporter)) == 1
    assert sorted(s.name for s in spans) == ["GET /orders/{order_id}", "load_order"]


def test_child_span_is_parented_by_the_server_span(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    client.get("/orders/7")
    child = next(s for s in span_exporter.get_finished_spans() if s.name == "load_order")
    (server,) = server_spans(span_exporter)
    assert child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id


def test_sync_routes_keep_the_context_in_the_threadpool(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    client.get("/sync")
    child = next(s for s in span_exporter.get_finished_spans() if s.name == "sync_work")
    (server,) = server_spans(span_exporter)
    assert child.parent.span_id == server.context.span_id


def test_incoming_traceparent_and_baggage_continue_the_callers_trace(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    seen_baggage.clear()
    client.get(
        "/orders/3",
        headers={
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            "tracestate": "vendor=abc",
            "baggage": "order.client_id=qt-123,desk=crypto",
        },
    )
    (span,) = server_spans(span_exporter)
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "abc"
    assert seen_baggage == {"order.client_id": "qt-123", "desk": "crypto"}


@pytest.mark.parametrize(
    "bad",
    [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "garbage",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_malformed_traceparent_starts_a_new_trace(client, span_exporter, bad: str) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/orders/3", headers={"traceparent": bad}).status_code == 200
    (span,) = server_spans(span_exporter)
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != TRACE_ID


def test_unsampled_caller_is_respected(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    client.get("/orders/3", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert span_exporter.get_finished_spans() == ()


def test_unhandled_exception_is_recorded_as_an_error(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/fail").status_code == 500
    (span,) = server_spans(span_exporter)
    assert span.name == "GET /fail"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["error.type"] == "RuntimeError"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "database exploded"
    assert "Traceback" in event.attributes["exception.stacktrace"]


def test_client_errors_are_not_span_errors(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    client.get("/missing")
    (span,) = server_spans(span_exporter)
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET


def test_unmatched_path_span_has_method_only_name_and_no_route(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    client.get("/no/such/path")
    (span,) = server_spans(span_exporter)
    assert span.name == "GET"
    assert "http.route" not in span.attributes


def test_health_and_metrics_are_not_traced(client, span_exporter) -> None:  # type: ignore[no-untyped-def]
    for path in ("/health/live", "/health/ready", "/health", "/metrics"):
        assert client.get(path).status_code == 200
    assert span_exporter.get_finished_spans() == ()


def test_a_stored_traceparent_becomes_a_span_link(span_exporter) -> None:  # type: ignore[no-untyped-def]
    from backend.infra.observability import links_from_traceparent

    stored = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with get_tracer("t").start_as_current_span(
        "order.fill", links=links_from_traceparent(stored, {"link.reason": "order"})
    ):
        pass
    (span,) = span_exporter.get_finished_spans()
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == TRACE_ID
    assert f"{link.context.span_id:016x}" == PARENT_ID
    assert link.attributes["link.reason"] == "order"
    assert links_from_traceparent(None) == []
    assert links_from_traceparent("00-garbage") == []


def test_a_stored_context_becomes_the_parent_of_spans_started_inside(span_exporter) -> None:  # type: ignore[no-untyped-def]
    from backend.infra.observability import current_traceparent, use_trace_context

    stored = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with (
        use_trace_context(stored, "vendor=x"),
        get_tracer("t").start_as_current_span("send order.filled"),
    ):
        pass
    assert current_traceparent() is None  # detached again
    (span,) = span_exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.context.trace_state.get("vendor") == "x"
    for nothing in (None, "00-garbage"):
        with use_trace_context(nothing):
            assert current_traceparent() is None


def test_a_lone_stored_traceparent_gives_the_context_the_propagators_give(span_exporter) -> None:  # type: ignore[no-untyped-def]
    """Without `tracestate` or baggage, `use_trace_context` reads the value itself: the span
    it makes current must be the one the W3C propagator extracts, flags included."""
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    from backend.infra.observability import use_trace_context

    for flags in ("01", "00"):
        stored = f"00-{TRACE_ID}-{PARENT_ID}-{flags}"
        expected = trace.get_current_span(extract({"traceparent": stored})).get_span_context()
        with use_trace_context(stored):
            got = trace.get_current_span().get_span_context()
        assert got == expected and got.is_remote
        assert got.trace_flags == expected.trace_flags
    for malformed in (
        "00-garbage",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
    ):
        with use_trace_context(malformed):
            assert not trace.get_current_span().get_span_context().is_valid


def test_injected_context_is_what_the_propagators_write(span_exporter) -> None:  # type: ignore[no-untyped-def]
    """`inject_trace_context` writes the W3C headers itself when there is no baggage: the
    carrier must equal the propagators' own, with and without `tracestate`, and baggage
    still goes through them."""
    from opentelemetry import baggage, context
    from opentelemetry.propagate import inject

    from backend.infra.observability import inject_trace_context, use_trace_context

    def both() -> tuple[dict[str, str], dict[str, str]]:
        expected: dict[str, str] = {}
        inject(expected)
        return dict(inject_trace_context({})), expected

    assert both() == ({}, {})  # no span: nothing
    for flags, state in (("01", None), ("00", "vendor=x,other=y")):
        with (
            use_trace_context(f"00-{TRACE_ID}-{PARENT_ID}-{flags}", state),
            get_tracer("t").start_as_current_span("child"),
        ):
            got, expected = both()
            assert got == expected and got["traceparent"].endswith(f"-{flags}")
            assert ("tracestate" in got) == (state is not None)
            token = context.attach(baggage.set_baggage("tenant", "a"))
            try:
                got, expected = both()
                assert got == expected and got["baggage"] == "tenant=a"
            finally:
                context.detach(token)


async def call_asgi(
    app, method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""
) -> int:  # type: ignore[no-untyped-def]
    """One request straight through the ASGI interface: methods no HTTP client would send."""
    status = 0
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[call-overload]

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
        "headers": headers,
        "server": ("127.0.0.1", 18081),
        "client": ("203.0.113.9", 5555),
    }
    await app(scope, receive, send)
    return status


@pytest.mark.parametrize("method", ["FOO", "get", "PROPFIND"])
async def test_an_unknown_method_is_other_and_the_span_is_named_http(
    span_exporter, method: str
) -> None:  # type: ignore[no-untyped-def]
    assert await call_asgi(make_app(metrics=False), method, "/orders/5", [(b"host", b"api")]) == 405
    (span,) = server_spans(span_exporter)
    assert span.name == "HTTP /orders/{order_id}"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == method


async def test_query_is_a_known_method(span_exporter) -> None:  # type: ignore[no-untyped-def]
    await call_asgi(make_app(metrics=False), "QUERY", "/orders/5", [])
    (span,) = server_spans(span_exporter)
    assert span.name == "QUERY /orders/{order_id}"
    assert span.attributes["http.request.method"] == "QUERY"
    assert "http.request.method_original" not in span.attributes


async def test_server_address_comes_from_the_host_header_not_the_socket(span_exporter) -> None:  # type: ignore[no-untyped-def]
    await call_asgi(
        make_app(metrics=False), "GET", "/orders/5", [(b"host", b"api.example.com:8443")]
    )
    await call_asgi(make_app(metrics=False), "GET", "/orders/6", [(b"host", b"api.example.com")])
    await call_asgi(
        make_app(metrics=False),
        "GET",
        "/orders/7",
        [(b"host", b"internal:8000"), (b"x-forwarded-host", b"[2001:db8::1]:9443")],
    )
    first, second, third = server_spans(span_exporter)
    assert (first.attributes["server.address"], first.attributes["server.port"]) == (
        "api.example.com",
        8443,
    )
    assert (second.attributes["server.address"], second.attributes["server.port"]) == (
        "api.example.com",
        80,
    )
    assert (third.attributes["server.address"], third.attributes["server.port"]) == (
        "2001:db8::1",
        9443,
    )


async def test_query_and_user_agent_are_recorded_and_secrets_in_the_query_redacted(
    span_exporter,
) -> None:  # type: ignore[no-untyped-def]
    await call_asgi(
        make_app(metrics=False),
        "GET",
        "/orders/5",
        [(b"host", b"api"), (b"user-agent", b"audit-agent/1.0")],
        query=b"q=1&sig=SECRETSIG&access_token=abc",
    )
    (span,) = server_spans(span_exporter)
    assert span.attributes["url.query"] == "q=1&sig=REDACTED&access_token=REDACTED"
    assert span.attributes["user_agent.original"] == "audit-agent/1.0"


def test_known_methods_can_be_replaced_by_the_standard_variable() -> None:
    from backend.infra.observability._config import load_config

    config = load_config("s", env={"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": "GET,POST,PROPFIND"})
    assert config.http_known_methods == frozenset({"GET", "POST", "PROPFIND"})
