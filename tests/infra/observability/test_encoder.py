"""The lean OTLP encoder writes what the reference encoder writes (decoded and compared)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import Link, SpanKind, StatusCode

from backend.infra.observability import get_tracer
from backend.infra.observability._export import encode_spans


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
