"""The OTLP exporter as the specification asks: retries with back-off and `Retry-After`,
`User-Agent`, gzip, configured headers, and one deadline for the whole shutdown."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backend.infra.observability import get_tracer
from backend.infra.observability._export import (
    ExportQueue,
    GrpcTransport,
    HttpTransport,
    make_transport,
    parse_retry_after,
)
from backend.infra.observability._metrics import SPANS_DROPPED


class FakeCollector:
    """An OTLP/HTTP receiver that answers from a script: (status, headers) per request,
    then 200. Records each request's time, headers and decoded body."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append((time.monotonic(), dict(self.headers), body))
                collector.paths.append(self.path)
                status, headers = collector.script.pop(0) if collector.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base_url}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def spans(span_exporter) -> list[Any]:  # type: ignore[no-untyped-def]
    with get_tracer("exporter-test").start_as_current_span("one"):
        pass
    return list(span_exporter.named("one"))


def dropped(reason: str) -> float:
    return SPANS_DROPPED.labels(reason)._value.get()  # type: ignore[no-any-return]


def export(transport: Any, spans: list[Any], timeout_s: float = 10.0) -> bool:
    queue = ExportQueue(transport, delay_ms=10_000, timeout_s=timeout_s)
    try:
        for span in spans:
            queue.on_end(span)
        return bool(queue.force_flush(15_000))
    finally:
        queue.shutdown(1000)


def test_a_503_with_retry_after_is_retried_after_the_delay_it_names(spans) -> None:  # type: ignore[no-untyped-def]
    with FakeCollector([(503, {"Retry-After": "1"})]) as collector:
        failed = dropped("export_failed")
        assert export(HttpTransport(collector.url, {}, 5.0), spans)
    assert len(collector.requests) == 2
    assert collector.requests[1][0] - collector.requests[0][0] >= 0.9
    assert dropped("export_failed") == failed
    assert collector.requests[0][2] == collector.requests[1][2]


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_statuses_are_retried_with_back_off(spans, status: int) -> None:  # type: ignore[no-untyped-def]
    with FakeCollector([(status, {}), (status, {})]) as collector:
        assert export(HttpTransport(collector.url, {}, 5.0), spans)
    assert len(collector.requests) == 3


def test_a_permanent_refusal_is_not_retried_and_is_counted(spans) -> None:  # type: ignore[no-untyped-def]
    with FakeCollector([(400, {})]) as collector:
        failed = dropped("export_failed")
        export(HttpTransport(collector.url, {}, 5.0), spans)
    assert len(collector.requests) == 1
    assert dropped("export_failed") == failed + len(spans)


def test_retries_stay_inside_the_export_timeout(spans) -> None:  # type: ignore[no-untyped-def]
    with FakeCollector([(503, {"Retry-After": "30"})]) as collector:
        failed = dropped("export_failed")
        started = time.monotonic()
        export(HttpTransport(collector.url, {}, 1.0), spans, timeout_s=1.0)
        assert time.monotonic() - started < 5
    assert len(collector.requests) == 1
    assert dropped("export_failed") == failed + len(spans)


def test_user_agent_gzip_and_configured_headers_are_sent(spans) -> None:  # type: ignore[no-untyped-def]
    with FakeCollector([]) as collector:
        transport = make_transport(
            collector.url, "http/protobuf", True, {"api-key": "k1"}, 5.0, "gzip"
        )
        assert export(transport, spans)
    ((_, headers, body),) = collector.requests
    assert headers["User-Agent"].startswith("QuantumTrader-OTLP-Exporter-Python/")
    assert headers["Content-Encoding"] == "gzip"
    assert headers["api-key"] == "k1"
    request = ExportTraceServiceRequest.FromString(gzip.decompress(body))
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "one"


@pytest.fixture
def flaky_grpc() -> Iterator[tuple[str, list[str]]]:
    """A gRPC TraceService that answers UNAVAILABLE once, then OK; yields (url, user agents)."""
    seen: list[str] = []

    def export_rpc(request: bytes, context: Any) -> bytes:
        seen.append(dict(context.invocation_metadata()).get("user-agent", ""))
        if len(seen) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export_rpc)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.stop(0)


def test_grpc_unavailable_is_retried(spans, flaky_grpc) -> None:  # type: ignore[no-untyped-def]
    url, seen = flaky_grpc
    assert export(GrpcTransport(url, True, {}, 5.0), spans)
    assert len(seen) == 2
    assert "QuantumTrader-OTLP-Exporter-Python/" in seen[0]


def retry_info_status(code: int, delay_s: float) -> bytes:
    """A google.rpc.Status with one RetryInfo detail, encoded as a collector would send it."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay_s), nanos=int(delay_s % 1 * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code, message="slow down", details=[detail]).SerializeToString()


@contextmanager
def refusing_grpc(
    code: grpc.StatusCode, retry_delay_s: float | None, refusals: int = 1
) -> Iterator[tuple[str, list[float]]]:
    """A gRPC TraceService refusing `refusals` calls with `code` (and a RetryInfo of
    `retry_delay_s`, if given), then accepting; yields (url, the time of each call)."""
    calls: list[float] = []

    def export_rpc(request: bytes, context: Any) -> bytes:
        calls.append(time.monotonic())
        if len(calls) <= refusals:
            if retry_delay_s is not None:
                status = retry_info_status(code.value[0], retry_delay_s)
                context.set_trailing_metadata((("grpc-status-details-bin", status),))
            context.abort(code, "slow down")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export_rpc)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        server.stop(0)


def test_grpc_resource_exhausted_with_retry_info_is_retried_after_its_delay(spans) -> None:  # type: ignore[no-untyped-def]
    with refusing_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.8) as (url, calls):
        failed = dropped("export_failed")
        assert export(GrpcTransport(url, True, {}, 5.0), spans)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.75
    assert dropped("export_failed") == failed


def test_grpc_resource_exhausted_without_retry_info_is_dropped_and_counted(spans) -> None:  # type: ignore[no-untyped-def]
    with refusing_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, None) as (url, calls):
        failed = dropped("export_failed")
        export(GrpcTransport(url, True, {}, 5.0), spans)
    assert len(calls) == 1
    assert dropped("export_failed") == failed + len(spans)


def test_grpc_retry_info_beyond_the_export_timeout_drops_the_batch_at_once(spans) -> None:  # type: ignore[no-untyped-def]
    with refusing_grpc(grpc.StatusCode.UNAVAILABLE, 30.0) as (url, calls):
        failed = dropped("export_failed")
        started = time.monotonic()
        export(GrpcTransport(url, True, {}, 1.0), spans, timeout_s=1.0)
        assert time.monotonic() - started < 5
    assert len(calls) == 1
    assert dropped("export_failed") == failed + len(spans)


def test_grpc_unavailable_keeps_being_retried_with_back_off_within_the_budget(spans) -> None:  # type: ignore[no-untyped-def]
    with refusing_grpc(grpc.StatusCode.UNAVAILABLE, None, refusals=3) as (url, calls):
        assert export(GrpcTransport(url, True, {}, 10.0), spans)
    assert len(calls) == 4
    gaps = [b - a for a, b in pairwise(calls)]
    assert all(gap >= 0.1 for gap in gaps)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 50 < (parse_retry_after(later) or 0) <= 61


@pytest.fixture
def hung_collector() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
    finally:
        listener.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_shutdown_with_a_hung_collector_keeps_one_deadline(  # type: ignore[no-untyped-def]
    spans, hung_collector: str, protocol: str
) -> None:
    transport = make_transport(hung_collector, protocol, True, {}, 10.0)
    queue = ExportQueue(transport, delay_ms=10, timeout_s=10.0)
    for span in spans:
        queue.on_end(span)
    time.sleep(0.1)  # the worker is now blocked sending to the collector
    started = time.monotonic()
    # What a service does on SIGTERM: flush when the app's lifespan ends, then shut down.
    queue.begin_shutdown(1500)
    queue.force_flush(1500)
    queue.shutdown(1500)
    # One 1.5 s deadline for both (plus the short wait for the aborted send), not three.
    assert time.monotonic() - started < 2.5
