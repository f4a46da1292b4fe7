"""The lean OTLP encoder writes what the reference encoder writes (decoded and compared)."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from backend.infra.observability import _export, _redact, get_tracer
from backend.infra.observability._export import encode_spans
from backend.infra.observability._redact import configure_scrubbing


def normalised(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                # The reference leaves the W3C trace-flag bits out of `flags`; the spec allows
                # both, so compare the other bits only. An UNSET status is an empty message.
                span.flags &= ~0xFF
                for link in span.links:
                    link.flags &= ~0xFF
                if span.status.code == 0 and not span.status.message:
                    span.ClearField("status")
    return request


def test_lean_encoding_decodes_to_the_reference_encoding(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("encoder-test", "1.2.3")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.route", "/orders/{id}")
    link = Link(parent.get_span_context(), {"link.kind": "order"})
    with tracer.start_as_current_span(
        "child",
        kind=SpanKind.PRODUCER,
        links=[link],
        attributes={
            "text": 'héllo "quoted"',
            "count": -42,
            "big": 2**62,
            "ratio": 0.125,
            "flag": True,
            "names": ["a", "b"],
            "numbers": [1, 2, 3],
            "floats": [1.5, -2.5],
        },
    ) as child:
        child.add_event("retry", {"attempt": 2})
        child.set_status(StatusCode.ERROR, "broker unavailable")
    with tracer.start_as_current_span("plain", kind=SpanKind.CONSUMER):
        pass
    spans = span_exporter.get_finished_spans()
    assert len(spans) == 3

    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = ExportTraceServiceRequest.FromString(reference(spans).SerializeToString())
    assert normalised(ours) == normalised(theirs)


def test_sampled_flag_is_carried_in_span_flags(span_exporter) -> None:  # type: ignore[no-untyped-def]
    with get_tracer("encoder-test").start_as_current_span("x"):
        pass
    (span,) = span_exporter.get_finished_spans()
    decoded = ExportTraceServiceRequest.FromString(encode_spans([span]))
    flags = decoded.resource_spans[0].scope_spans[0].spans[0].flags
    assert flags & 0x01 == 1 and flags & 0x100


def _as_reference_writes_it(spans: list[Any], ours: bytes) -> bytes:
    """The reference encoding of `spans` with our `flags` (it leaves out the W3C bits), our
    links' `trace_state` (it leaves that field out) and without the empty status it writes
    for UNSET: what the lean encoder must write, byte for byte."""
    theirs = reference(spans)
    ours_decoded = ExportTraceServiceRequest.FromString(ours)
    for rs, our_rs in zip(theirs.resource_spans, ours_decoded.resource_spans, strict=True):
        for ss, our_ss in zip(rs.scope_spans, our_rs.scope_spans, strict=True):
            for span, our_span in zip(ss.spans, our_ss.spans, strict=True):
                span.flags = our_span.flags
                for link, our_link in zip(span.links, our_span.links, strict=True):
                    link.flags = our_link.flags
                    link.trace_state = our_link.trace_state
                if span.status.code == 0 and not span.status.message:
                    span.ClearField("status")
    return bytes(theirs.SerializeToString(deterministic=True))


def test_lean_encoding_is_byte_identical_to_the_reference(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("encoder-bytes", "0.1")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    values: list[Any] = [
        "",
        "x" * 125,  # the last length whose AnyValue and KeyValue prefixes are one byte
        "y" * 126,
        "z" * 300,
        "é" * 70,  # 140 bytes of UTF-8 in 70 characters
        0,
        -1,
        2**63 - 1,
        -(2**63),
        127,
        128,
        True,
        False,
        0.1,
        ["a", "b" * 200],
        [1, -2],
        [True],
        [0.5],
    ]
    for round_ in range(2):  # the second round is served from the encoder's caches
        for n, value in enumerate(values):
            with tracer.start_as_current_span(
                "n" * (n * 10 + 1),
                context=set_span_in_context(NonRecordingSpan(remote)) if n % 2 else None,
                kind=list(SpanKind)[n % 5],
                attributes={"k" * (n * 7 + 1): value, "route": "/orders/{id}", "n": n},
                links=[Link(remote, {"why": value})] if n % 3 == 0 else [],
            ) as span:
                span.add_event("e", {"v": value, "round": round_})
                if n % 4 == 0:
                    span.set_status(StatusCode.ERROR, "broker down")
    spans = list(span_exporter.get_finished_spans())
    ours = encode_spans(spans)
    assert ours == _as_reference_writes_it(spans, ours)
    # Encoded again, now from the caches: the same bytes.
    assert encode_spans(spans) == ours


def test_high_cardinality_values_are_not_all_cached_and_still_encoded(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("encoder-ids")
    count = _export._Caches.VALUES_PER_KEY + 50
    for n in range(count):
        with tracer.start_as_current_span("send", attributes={"message.id": f"{n}-0"}):
            pass
    spans = list(span_exporter.get_finished_spans())
    ours = encode_spans(spans)
    assert ours == _as_reference_writes_it(spans, ours)
    cached = _export._CACHES.pairs[0x4A]["message.id"]
    assert len(cached) == _export._Caches.VALUES_PER_KEY


def test_reconfigured_scrubbing_applies_to_pairs_encoded_before(span_exporter) -> None:  # type: ignore[no-untyped-def]
    """A pair cached while a key was not secret must not go out once the key is secret (or
    stay redacted once scrubbing is switched off)."""
    with get_tracer("encoder-scrub").start_as_current_span("call") as span:
        span.set_attribute("app.account_number", "DE44-5001")
    spans = span_exporter.named("call")
    assert b"DE44-5001" in encode_spans(spans)  # and now cached
    previous = _redact._SCRUBBER[0]
    try:
        configure_scrubbing(True, ("account[._]?number",))
        payload = encode_spans(spans)
        assert b"DE44-5001" not in payload
        assert b"REDACTED" in payload
        configure_scrubbing(False)
        assert b"DE44-5001" in encode_spans(spans)
    finally:
        _redact._SCRUBBER[0] = previous
