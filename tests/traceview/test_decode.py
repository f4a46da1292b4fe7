"""The decoder process: what it sends back is what the writer would have decoded itself, and a
decoder that dies loses nothing."""

from __future__ import annotations

import os
import signal
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backend.infra.traceview._decode import (
    Decoder,
    _blob_in_child,
    _records_of_blob,
    records_of,
)


def request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "execution"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "order.submit"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000, 2_000_000
    attr = span.attributes.add()
    attr.key, attr.value.string_value = "order.client_order_id", "c-1"
    event = span.events.add()
    event.name, event.time_unix_nano = "accepted", 1_500
    return req


def test_the_child_decodes_as_the_writer_would() -> None:
    req = request()
    decoder = Decoder(1)
    try:
        payload = req.SerializeToString()
        got = decoder.result(decoder.submit(payload, req), payload)
    finally:
        decoder.close()
    assert got == records_of(req)
    (record,) = got
    assert record[11] == ("c-1",)  # the business key, promoted
    assert b'"accepted"' in record[12] and b"1500" in record[12]  # the event, with its time


def awkward_request() -> ExportTraceServiceRequest:
    """A span with every kind of attribute value, links, an error and a status message."""
    req = request()
    span = req.resource_spans[0].scope_spans[0].spans[0]
    values: list[tuple[str, str, Any]] = [
        ("big", "int_value", -(2**63)),
        ("ratio", "double_value", 0.25),
        ("flag", "bool_value", True),
        ("raw", "bytes_value", b"\x00\xff"),
        ("symbol", "string_value", "BTCUSDT"),
    ]
    for key, field, value in values:
        kv = span.attributes.add()
        kv.key = key
        setattr(kv.value, field, value)
    listed = span.attributes.add()
    listed.key = "tags"
    listed.value.array_value.values.add().string_value = "a"
    listed.value.array_value.values.add().int_value = 2
    link = span.links.add()
    link.trace_id, link.span_id = b"\x03" * 16, b"\x04" * 8
    span.status.code, span.status.message = 2, "venue said no"
    return req


def test_a_request_comes_back_from_the_child_as_one_blob_of_the_same_records() -> None:
    req = awkward_request()
    payload = req.SerializeToString()
    blob = _blob_in_child(payload)
    assert isinstance(blob, bytes)
    expected = records_of(req)
    got = _records_of_blob(blob)
    assert got == expected
    assert got.received == expected.received
    decoder = Decoder(1)
    try:
        through_child = decoder.result(decoder.submit(payload, req), payload)
    finally:
        decoder.close()
    assert through_child == expected
    assert through_child.received == expected.received


def test_a_decoder_that_dies_loses_nothing() -> None:
    req = request()
    payload = req.SerializeToString()
    decoder = Decoder(1)
    try:
        pool = decoder._pool
        assert pool is not None
        for pid in list(pool._processes or {}):
            os.kill(pid, signal.SIGKILL)
        first = decoder.result(decoder.submit(payload, req), payload)
        second = decoder.result(decoder.submit(payload, req), payload)
    finally:
        decoder.close()
    assert first == second == records_of(req)


def test_the_decoder_process_exits_when_the_collector_is_killed() -> None:
    import subprocess
    import sys

    from tests.support.polling import wait_until

    script = (
        "import sys, time\n"
        "from backend.infra.traceview._decode import Decoder\n"
        "d = Decoder(1)\n"
        "print(*d._pool._processes, flush=True)\n"
        "time.sleep(600)\n"
    )
    collector = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert collector.stdout is not None
        children = [int(pid) for pid in collector.stdout.readline().split()]
        assert children
    finally:
        collector.kill()  # SIGKILL: no shutdown of the pool
        collector.wait()

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in children)

    wait_until(gone, 30, "the decoder process to exit")


def test_a_span_is_as_important_as_its_name_attributes_and_error_say() -> None:
    """The decoder reads a span's attributes for its importance only when one of their keys
    can change it; every record's level is still `level_of` of the whole span."""
    from backend.infra.traceview._importance import level_of
    from bench.collector import encode

    def span(i: int, name: str, kind: int, attributes: dict[str, Any], error: bool = False) -> Any:
        return {
            "trace": bytes([i]) * 16,
            "span": bytes([i]) * 8,
            "parent": b"",
            "service": "svc",
            "name": name,
            "kind": kind,
            "start": 10**18,
            "end": 10**18 + 5,
            "attributes": attributes,
            "links": (),
            "error": error,
        }

    spans = [
        span(1, "GET /health/live", 2, {"url.path": "/health/live"}),
        span(2, "SELECT", 3, {"db.statement": "SELECT 1", "db.system": "postgresql"}),
        span(3, "check", 1, {"approved": False}),
        span(4, "decide", 1, {"outcome": "DENIED", "symbol": "X"}),
        span(5, "decide", 1, {"outcome": "SKIPPED", "symbol": "X"}),
        span(6, "decide", 1, {"outcome": "SKIPPED"}, error=True),
        span(7, "x", 1, {"order.client_order_id": ""}),
        span(8, "x", 1, {"order_id": 12}),
        span(9, "GET /metrics", 2, {"symbol": "X"}),
        span(10, "order.submit", 1, {"symbol": "X"}),
        span(11, "tick", 1, {}),
    ]
    records = records_of(ExportTraceServiceRequest.FromString(encode(spans)))
    got = {r[0][0]: r[15] for r in records}
    want = {s["trace"][0]: int(level_of(s["name"], s["attributes"], s["error"])) for s in spans}
    assert got == want
    assert sorted(set(got.values())) == [0, 1, 2]


def test_an_attribute_seen_before_decodes_to_its_own_value() -> None:
    """Attributes are remembered by their encoded bytes: values alike in Python but not on the
    wire (an empty string, zero, false, no value) stay apart, on first sight and after."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    spans = rs.scope_spans.add().spans
    values: list[tuple[str, Any]] = [
        ("string_value", ""),
        ("int_value", 0),
        ("bool_value", False),
        ("double_value", 0.0),
        ("", None),
        ("string_value", "x"),
        ("int_value", 1),
        ("bool_value", True),
    ]
    for i, (field, value) in enumerate(values):
        span = spans.add()
        span.trace_id, span.span_id, span.name = bytes([i + 1]) * 16, b"\x02" * 8, "tick"
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000, 2_000
        kv = span.attributes.add()
        kv.key = "k"
        if field:
            setattr(kv.value, field, value)
        else:
            kv.value.SetInParent()
    for _ in range(2):
        got = [record[10] for record in records_of(req)]
        assert got == [
            b'[""]',
            b"[0]",
            b"[false]",
            b"[0.0]",
            b"[null]",
            b'["x"]',
            b"[1]",
            b"[true]",
        ]


def test_the_bench_counts_each_stage_in_process() -> None:
    from bench.collector import COUNT_STAGES, main

    for stage in COUNT_STAGES:
        assert main(["--count", stage, "--spans", "600"]) == 0
