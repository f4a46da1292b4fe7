"""The typed clients' direct path: what it sends, records and logs is what the httpx path does,
its connections are kept and replaced, and an answer never reaches the wrong call."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import baggage, context
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr

from backend.infra.observability import get_tracer
from backend.infra.service._auth import SiblingBearerAuth
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.ai_engine import PredictionPublic
from microservices.contracts.execution import ExecutionClient, ExposurePublic
from microservices.contracts.risk_safety import CheckRequest, CheckResult, RiskSafetyClient
from tests.acceptance.harness import StubServer

TOKEN = "direct-path-token-0123456789"
ORDER = CheckRequest(
    client_order_id="bot-1", symbol="BTCUSDT", side="BUY", quantity=Decimal("0.0120")
)
APPROVED = CheckResult(
    approved=True, reason="APPROVED", detail="", decision_id="d-1", approval=None, state="ACTIVE"
)


@pytest.fixture
def risk_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A risk-safety stand-in over real HTTP that records what each request carried; the
    services' address table points risk-safety at it, so the bearer token goes there."""
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/check")
    async def check(request: Request) -> JSONResponse:
        seen.append({"headers": dict(request.headers), "body": await request.body()})
        return JSONResponse(APPROVED.model_dump(mode="json"))

    with StubServer(app) as server:
        monkeypatch.setenv("RISK_SAFETY_URL", server.url)
        yield server.url, seen


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5, auth=SiblingBearerAuth(SecretStr(TOKEN))) as http:
        yield http


async def test_a_direct_call_sends_records_and_logs_what_the_httpx_path_does(
    risk_stub: tuple[str, list[dict[str, Any]]], span_exporter: Any, log_lines: io.StringIO
) -> None:
    url, seen = risk_stub
    tracer = get_tracer("test")
    token = context.attach(baggage.set_baggage("tenant", "desk-7"))
    try:
        async with http_client() as http:
            for client in (RiskSafetyClient(http), RiskSafetyClient(http, direct=True)):
                with tracer.start_as_current_span("decide"):
                    assert await client.check(ORDER) == APPROVED
                client.close()
    finally:
        context.detach(token)
    via_httpx, direct = seen
    assert direct["body"] == via_httpx["body"] == ORDER.model_dump_json().encode()
    for name in ("authorization", "content-type", "content-length", "host", "user-agent"):
        assert direct["headers"][name] == via_httpx["headers"][name], name
    assert direct["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert direct["headers"]["baggage"] == via_httpx["headers"]["baggage"] == "tenant=desk-7"
    spans = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(spans) == 2
    for span, request in zip(spans, seen, strict=True):
        # The server is told the CLIENT span as the caller, which continues the decision.
        ctx = span.get_span_context()
        assert request["headers"]["traceparent"] == (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        )
        assert span.parent is not None and span.parent.trace_id == ctx.trace_id
    assert [s.name for s in spans] == ["POST", "POST"]
    assert dict(spans[1].attributes or {}) == dict(spans[0].attributes or {})
    assert dict(spans[1].attributes or {})["url.full"] == f"{url}/check"
    assert spans[1].status.status_code == spans[0].status.status_code
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = [(r["logger"], r["level"], r["message"]) for r in lines if r["logger"] == "httpx"]
    assert access == [("httpx", "INFO", f'HTTP Request: POST {url}/check "HTTP/1.1 200 OK"')] * 2


EXPOSURE = ExposurePublic(
    as_of_ms=1,
    fill_sequence=7,
    risk_state=None,
    risk_epoch=None,
    holdings={"BTCUSDT": Decimal("0.5")},
    working=[],
    client_order_ids_since=["bot-1"],
)


async def test_a_direct_call_with_a_query_string_sends_and_records_what_httpx_does(
    monkeypatch: pytest.MonkeyPatch, span_exporter: Any, log_lines: io.StringIO
) -> None:
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.get("/exposure")
    async def exposure(request: Request) -> JSONResponse:
        seen.append(
            {
                "target": request.scope["raw_path"] + b"?" + request.scope["query_string"],
                "headers": dict(request.headers),
            }
        )
        return JSONResponse(EXPOSURE.model_dump(mode="json"))

    with StubServer(app) as server:
        monkeypatch.setenv("EXECUTION_URL", server.url)
        through_httpx: list[httpx.Request] = []

        async def note(request: httpx.Request) -> None:
            through_httpx.append(request)

        async with httpx.AsyncClient(
            timeout=5, auth=SiblingBearerAuth(SecretStr(TOKEN)), event_hooks={"request": [note]}
        ) as http:
            for client in (ExecutionClient(http), ExecutionClient(http, direct=True)):
                assert await client.exposure(1_733_000_000_000) == EXPOSURE
                client.close()
    # Only the first call went through httpx: the direct path serves a query string too.
    assert len(through_httpx) == 1
    via_httpx, direct = seen
    assert direct["target"] == via_httpx["target"] == b"/exposure?since_ms=1733000000000"
    for name in ("authorization", "host", "user-agent"):
        assert direct["headers"][name] == via_httpx["headers"][name], name
    assert direct["headers"]["authorization"] == f"Bearer {TOKEN}"
    spans = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in spans] == ["GET", "GET"]
    assert dict(spans[1].attributes or {}) == dict(spans[0].attributes or {})
    full = f"{server.url}/exposure?since_ms=1733000000000"
    assert dict(spans[1].attributes or {})["url.full"] == full
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = [r["message"] for r in lines if r["logger"] == "httpx"]
    assert access == [f'HTTP Request: GET {full} "HTTP/1.1 200 OK"'] * 2


class RawServer:
    """A bare HTTP/1.1 server over real TCP whose answers the test scripts: it counts the
    connections it accepted and answers each request with the next scripted reply, once the
    test lets it (`release`)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.replies: list[tuple[bytes, asyncio.Event | None]] = []
        self._server: asyncio.Server | None = None

    def answer(self, status: str, body: dict[str, Any], *, close: bool = False) -> asyncio.Event:
        """Script the next reply; it is sent once the returned event is set (already set)."""
        content = json.dumps(body).encode()
        head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(content)}\r\n"
        if close:
            head += "connection: close\r\n"
        released = asyncio.Event()
        released.set()
        self.replies.append((head.encode() + b"\r\n" + content, released))
        return released

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append((number, await reader.readexactly(length)))
                reply, released = self.replies.pop(0)
                if released is not None:
                    await released.wait()
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self._server.close()


def _prediction(source: str) -> dict[str, Any]:
    return PredictionPublic(
        symbol="BTCUSDT",
        direction="BUY",
        confidence=0.9,
        probability_up=0.9,
        model_version="m-1",
        signal_id=source,
        features={},
    ).model_dump(mode="json")


async def test_a_direct_client_keeps_its_connection_and_replaces_one_the_server_closed() -> None:
    await _keeps_and_replaces_connections()


def test_the_direct_path_runs_on_the_services_event_loop_too() -> None:
    # uvicorn serves the services on uvloop, whose transports are not asyncio's classes.
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_keeps_and_replaces_connections())


async def _keeps_and_replaces_connections() -> None:
    server = RawServer()
    async with server.running() as url, http_client() as http:
        from microservices.contracts.ai_engine import AiEngineClient

        client = AiEngineClient(http, url, direct=True)
        prices = [Decimal(100)] * 21
        server.answer("200 OK", _prediction("a"))
        server.answer("200 OK", _prediction("b"), close=True)
        server.answer("200 OK", _prediction("c"))
        server.answer("200 OK", _prediction("d"))
        answers = [(await client.predict("BTCUSDT", prices)).signal_id for _ in range(4)]
        client.close()
    assert answers == ["a", "b", "c", "d"]
    # Two requests on the first connection (the second answer closed it), two on a new one.
    assert [number for number, _body in server.requests] == [1, 1, 2, 2]


async def test_an_answer_too_late_for_its_call_never_answers_the_next_one(
    span_exporter: Any,
) -> None:
    server = RawServer()
    async with server.running() as url, http_client() as http:
        from microservices.contracts.ai_engine import AiEngineClient

        client = AiEngineClient(http, url, direct=True)
        prices = [Decimal(100)] * 21
        late = server.answer("200 OK", _prediction("late"))
        late.clear()
        server.answer("200 OK", _prediction("next"))
        with pytest.raises(UpstreamError) as timed_out:
            await client._call(
                "POST",
                "/predict",
                PredictionPublic,
                body=None,
                timeout_s=0.2,
            )
        late.set()
        assert (await client.predict("BTCUSDT", prices)).signal_id == "next"
        client.close()
    assert "ReadTimeout" in str(timed_out.value)
    assert [number for number, _body in server.requests] == [1, 2]
    failed = next(s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "ReadTimeout"


async def test_refusals_failures_and_a_closed_port_are_told_apart_on_the_direct_path(
    span_exporter: Any,
) -> None:
    server = RawServer()
    async with server.running() as url, http_client() as http:
        client = RiskSafetyClient(http, url, direct=True)
        server.answer("422 Unprocessable Entity", {"detail": "quantity below the lot size"})
        server.answer("503 Service Unavailable", {"detail": "database down"})
        with pytest.raises(Refused) as refused:
            await client.check(ORDER)
        with pytest.raises(UpstreamError) as failed:
            await client.check(ORDER)
        client.close()
    closed = RiskSafetyClient(http, url, direct=True)  # the server is gone now
    with pytest.raises(UpstreamError) as unreachable:
        await closed.check(ORDER)
    assert (refused.value.status, "lot size" in refused.value.detail) == (422, True)
    assert (failed.value.status, "database down" in failed.value.detail) == (503, True)
    assert unreachable.value.status is None and "ConnectError" in unreachable.value.detail
    spans = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [dict(s.attributes or {})["error.type"] for s in spans] == ["422", "503", "ConnectError"]
    assert {s.status.status_code for s in spans} == {StatusCode.ERROR}
