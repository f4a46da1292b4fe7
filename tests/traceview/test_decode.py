"""The decoder process: what it sends back is what the writer would have decoded itself, and a
decoder that dies loses nothing."""

from __future__ import annotations

import os
import signal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backend.infra.traceview._decode import Decoder, records_of


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
