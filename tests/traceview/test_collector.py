"""The embedded collector takes what the official OpenTelemetry exporters send, over gRPC and
HTTP (plain, gzip, deflate, JSON), stores it, and answers bad input and overload as OTLP says."""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from starlette.testclient import TestClient

from backend.infra.traceview._collector import GrpcReceiver, HttpServer, ingest_app
from backend.infra.traceview._queries import SearchQuery
from backend.infra.traceview._sqlstore import SqliteSpanStore
from tests.support.polling import wait_until


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteSpanStore]:
    with SqliteSpanStore(
        tmp_path / "spans.sqlite", hold_s=0.0, tick_sample_rate=1.0, noise_sample_rate=1.0
    ) as s:
        yield s


@pytest.fixture
def grpc_receiver(store: SqliteSpanStore) -> Iterator[GrpcReceiver]:
    with GrpcReceiver(store, port=0) as receiver:
        yield receiver


@pytest.fixture
def http_server(store: SqliteSpanStore) -> Iterator[HttpServer]:
    with HttpServer(ingest_app(store)) as server:
        yield server


def send_trade(exporter: SpanExporter, service: str = "execution") -> dict[str, Any]:
    """Make a small trade trace with the SDK and export it; what a reader should find."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("qt.test")
    with tracer.start_as_current_span("signal") as signal:
        signal_ctx = signal.get_span_context()
    with tracer.start_as_current_span(
        "order.submit",
        kind=SpanKind.PRODUCER,
        links=[Link(signal_ctx)],
        attributes={"order.client_order_id": "c-42", "symbol": "BTCUSDT", "qty": 1.5},
    ) as submit:
        submit.add_event("accepted", {"venue": "paper"})
        with tracer.start_as_current_span("risk.check") as risk:
            risk.set_status(Status(StatusCode.ERROR, "limit breached"))
        ctx = submit.get_span_context()
    provider.shutdown()
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "signal_trace_id": f"{signal_ctx.trace_id:032x}",
        "signal_span_id": f"{signal_ctx.span_id:016x}",
    }


def check_trade(store: SqliteSpanStore, sent: dict[str, Any], service: str) -> None:
    store.flush()
    spans = store.trace(sent["trace_id"])
    assert [s.name for s in spans] == ["order.submit", "risk.check"]
    submit, risk = spans
    assert submit.service == service
    assert submit.kind == "producer"
    assert submit.attributes == {"order.client_order_id": "c-42", "symbol": "BTCUSDT", "qty": 1.5}
    assert submit.events == [("accepted", {"venue": "paper"})]
    # The event keeps its own time, within its span.
    assert len(submit.event_times_ns) == 1
    assert submit.start_ns <= submit.event_times_ns[0] <= submit.end_ns
    assert submit.links == [(sent["signal_trace_id"], sent["signal_span_id"])]
    assert submit.resource["service.name"] == service
    assert risk.parent_span_id == sent["span_id"]
    assert risk.error and risk.status_message == "limit breached"
    # The order's trace, and the signal trace it links to (stored though it holds no order).
    assert sorted(store.order_traces("c-42")) == sorted([sent["signal_trace_id"], sent["trace_id"]])
    assert store.linked_traces(sent["signal_trace_id"]) == [sent["trace_id"]]


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
def test_the_grpc_exporter_is_received(
    store: SqliteSpanStore, grpc_receiver: GrpcReceiver, compression: Any
) -> None:
    exporter = GrpcSpanExporter(
        endpoint=grpc_receiver.endpoint, insecure=True, compression=compression
    )
    sent = send_trade(exporter, "risk-safety")
    check_trade(store, sent, "risk-safety")


@pytest.mark.parametrize(
    "compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate]
)
def test_the_http_exporter_is_received(
    store: SqliteSpanStore, http_server: HttpServer, compression: Compression
) -> None:
    exporter = HttpSpanExporter(endpoint=f"{http_server.url}/v1/traces", compression=compression)
    sent = send_trade(exporter, "execution")
    check_trade(store, sent, "execution")


def test_requests_decoded_in_a_child_process_are_stored_the_same(tmp_path: Path) -> None:
    with (
        SqliteSpanStore(
            tmp_path / "spans.sqlite",
            hold_s=0.0,
            tick_sample_rate=1.0,
            noise_sample_rate=1.0,
            decode_processes=1,
        ) as store,
        HttpServer(ingest_app(store)) as server,
    ):
        sent = send_trade(HttpSpanExporter(endpoint=f"{server.url}/v1/traces"), "execution")
        check_trade(store, sent, "execution")
        assert store.stats().received_spans == 3


# The SDK's LoggingHandler is deprecated in favour of a contrib package; it is still what
# most applications run, so it is the sender to test against.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_log_exporters_are_received_and_found_by_span(
    store: SqliteSpanStore,
    grpc_receiver: GrpcReceiver,
    http_server: HttpServer,
    transport: str,
) -> None:
    exporter: Any = (
        GrpcLogExporter(endpoint=grpc_receiver.endpoint, insecure=True)
        if transport == "grpc"
        else HttpLogExporter(endpoint=f"{http_server.url}/v1/logs")
    )
    resource = Resource.create({"service.name": "execution"})
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger(f"qt.test.collector.{transport}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=logs)
    logger.addHandler(handler)
    tracer = TracerProvider(resource=resource).get_tracer("qt.test")
    try:
        with tracer.start_as_current_span("order.submit") as span:
            logger.warning("order denied: %s", "limit", extra={"client_order_id": "c-9"})
            ctx = span.get_span_context()
        logger.info("outside any span")
        logs.force_flush()
    finally:
        logger.removeHandler(handler)
        logs.shutdown()
    store.flush()
    (record,) = store.logs_for_span(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert record.body == "order denied: limit"
    assert record.severity == "WARN"
    assert record.service == "execution"
    assert record.attributes["client_order_id"] == "c-9"


def test_otlp_json_is_accepted(store: SqliteSpanStore, http_server: HttpServer) -> None:
    now = time.time_ns()
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "bridge"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "webhook",
                                "kind": 3,
                                "startTimeUnixNano": str(now),
                                "endTimeUnixNano": str(now + 10**9),
                                "attributes": [
                                    {"key": "client_order_id", "value": {"stringValue": "c-7"}}
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(f"{http_server.url}/v1/traces", json=body)
    assert response.status_code == 200, response.text
    store.flush()
    (span,) = store.trace("5b8efff798038103d269b633813fc60c")
    assert (span.service, span.name, span.kind, span.span_id) == (
        "bridge",
        "webhook",
        "client",
        "eee19b7ec3c1b174",
    )
    assert span.duration_ms == 1000.0


def test_malformed_http_bodies_get_a_clear_400(http_server: HttpServer) -> None:
    url = f"{http_server.url}/v1/traces"
    proto = {"Content-Type": "application/x-protobuf"}
    bad = httpx.post(url, content=b"\xff\xff\xff\x07garbage", headers=proto)
    assert bad.status_code == 400
    assert "not an OTLP ExportTraceServiceRequest" in bad.json()["message"]
    not_gzip = httpx.post(url, content=b"plain", headers={**proto, "Content-Encoding": "gzip"})
    assert not_gzip.status_code == 400
    assert "gzip" in not_gzip.json()["message"]
    not_json = httpx.post(url, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert "not JSON" in not_json.json()["message"]
    bad_id = httpx.post(
        url,
        json={"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]},
    )
    assert bad_id.status_code == 400
    assert "traceId 'zz' is not hex" in bad_id.json()["message"]
    bad_logs = httpx.post(f"{http_server.url}/v1/logs", content=b"\xff\xff", headers=proto)
    assert bad_logs.status_code == 400
    assert "ExportLogsServiceRequest" in bad_logs.json()["message"]


def test_a_wrong_content_type_or_encoding_gets_415(http_server: HttpServer) -> None:
    url = f"{http_server.url}/v1/traces"
    wrong = httpx.post(url, content=b"x", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415
    assert "application/x-protobuf" in wrong.json()["message"]
    brotli = httpx.post(
        url,
        content=b"x",
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "br"},
    )
    assert brotli.status_code == 415
    assert "'br'" in brotli.json()["message"]


def test_a_gzipped_protobuf_body_returns_an_export_response(
    store: SqliteSpanStore, http_server: HttpServer
) -> None:
    response = httpx.post(
        f"{http_server.url}/v1/traces",
        content=gzip.compress(ExportTraceServiceRequest().SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse.FromString(response.content)


def test_malformed_grpc_requests_get_invalid_argument(grpc_receiver: GrpcReceiver) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_receiver.port}") as channel:
        for method in (
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        ):
            export = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as caught:
                export(b"\xff\xff\xff\x07garbage", timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "not an OTLP Export" in (caught.value.details() or "")


def _many_spans(n: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(n):
        s = scope.spans.add()
        s.trace_id = (i + 1).to_bytes(16, "big")
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = "tick"
        s.start_time_unix_nano = time.time_ns()
        s.end_time_unix_nano = s.start_time_unix_nano + 1
    return bytes(request.SerializeToString())


def test_a_full_queue_refuses_as_otlp_says_and_counts(tmp_path: Path) -> None:
    with SqliteSpanStore(tmp_path / "small.sqlite", queue_spans=10) as small:
        with HttpServer(ingest_app(small)) as http, GrpcReceiver(small, port=0) as rpc:
            response = httpx.post(
                f"{http.url}/v1/traces",
                content=_many_spans(11),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert "11 spans refused" in response.json()["message"]
            with grpc.insecure_channel(f"127.0.0.1:{rpc.port}") as channel:
                export = channel.unary_unary(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                )
                with pytest.raises(grpc.RpcError) as caught:
                    export(_many_spans(12), timeout=5)
                assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert export(_many_spans(5), timeout=5) == b""
        small.flush()
        stats = small.stats()
        assert (stats.dropped_spans, stats.received_spans) == (23, 5)


def test_the_viewer_app_takes_otlp_on_its_own_port(store: SqliteSpanStore) -> None:
    from backend.infra.traceview import create_app

    sent = ExportTraceServiceRequest()
    span = sent.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex("ab" * 16)
    span.span_id = bytes.fromhex("cd" * 8)
    span.name = "order.submit"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 10
    client = TestClient(create_app(store))
    response = client.post(
        "/v1/traces",
        content=sent.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 200
    store.flush()
    assert [s.name for s in store.trace("ab" * 16)] == ["order.submit"]
    assert store.search(SearchQuery(operation="order.submit"))[0].trace_id == "ab" * 16


def test_the_traceview_command_keeps_spans_across_a_restart(tmp_path: Path) -> None:
    """`quantum-trader traceview` as the launcher starts it: spans sent over OTLP/gRPC and
    OTLP/HTTP are on its pages, and still there after the process is stopped and started."""
    from tests.support.procs import free_port, running

    viewer, rpc, otlp = free_port(), free_port(), free_port()
    args = ["-m", "quantum_trader", "traceview", "--port", str(viewer)]
    args += ["--grpc-port", str(rpc), "--otlp-http-port", str(otlp), "--var-dir", str(tmp_path)]
    base = f"http://127.0.0.1:{viewer}"

    def stored(trace_id: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{base}/api/traces/{trace_id}")
        return answer.json()["data"] if answer.status_code == 200 else []

    with running(args, {}, tmp_path / "first.log", port=viewer, ready_path="/api/traces"):
        by_http = send_trade(HttpSpanExporter(endpoint=f"http://127.0.0.1:{otlp}/v1/traces"))
        by_grpc = send_trade(GrpcSpanExporter(endpoint=f"http://127.0.0.1:{rpc}", insecure=True))
        by_viewer = send_trade(HttpSpanExporter(endpoint=f"{base}/v1/traces"))
        for sent in (by_http, by_grpc, by_viewer):
            wait_until(lambda s=sent: stored(s["trace_id"]), what="the trade on the viewer")
    assert (tmp_path / "traces" / "spans.sqlite").is_file()
    with running(args, {}, tmp_path / "second.log", port=viewer, ready_path="/api/traces"):
        for sent in (by_http, by_grpc, by_viewer):
            names = [s["name"] for s in stored(sent["trace_id"])]
            assert names == ["order.submit", "risk.check"]
