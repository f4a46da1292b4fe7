"""The lean span of `start_lean_span` (the event bus's per-message spans) is what the SDK's
`tracer.start_span` would give, and with the export queue as the only processor it is queued
as it is, encoding to the same OTLP bytes as the `ReadableSpan` copy other processors get."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from backend.infra.observability import (
    _tracing,
    activate_span,
    current_traceparent,
    get_tracer,
    span_context_from_traceparent,
    start_lean_span,
)
from backend.infra.observability._export import ExportQueue, encode_spans

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Transport:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def send(self, payload: bytes, timeout_s: float) -> None:
        self.payloads.append(payload)

    def abort(self) -> None: ...

    def close(self) -> None: ...


def described(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind,
        "attributes": dict(span.attributes),
        "parent": span.parent,
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version),
        "resource": span.resource,
        "flags": int(span.context.trace_flags),
        "trace_state": span.context.trace_state,
    }


def test_lean_span_records_what_an_sdk_span_records(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("backend.infra.eventbus")
    parent = span_context_from_traceparent(TRACEPARENT, "vendor=1")
    assert parent is not None
    attributes = {"messaging.operation.type": "process", "messaging.message.id": "1-0"}
    sdk = tracer.start_span(
        "process ticks",
        context=_tracing.set_span_in_context(NonRecordingSpan(parent)),
        kind=SpanKind.CONSUMER,
        attributes=dict(attributes),
        links=[Link(parent)],
    )
    sdk.end()
    lean = start_lean_span(
        tracer, "process ticks", SpanKind.CONSUMER, dict(attributes), parent, [Link(parent)]
    )
    assert isinstance(lean, _tracing.ServerSpan)
    lean.end()
    theirs, ours = span_exporter.get_finished_spans()
    assert isinstance(ours, ReadableSpan)  # another processor is registered: it gets a copy
    assert described(ours) == described(theirs)
    assert ours.context.trace_id == parent.trace_id


def test_lean_span_follows_the_current_span_and_the_parents_sampling(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("backend.infra.eventbus")
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    with activate_span(NonRecordingSpan(unsampled)):
        span = start_lean_span(tracer, "send ticks", SpanKind.PRODUCER, {"a": 1})
    assert not span.is_recording()
    assert span.get_span_context().trace_id == 0xABC
    assert not span.get_span_context().trace_flags.sampled
    root = start_lean_span(tracer, "send ticks", SpanKind.PRODUCER, {"a": None}, parent=None)
    with activate_span(root):
        assert current_traceparent() is not None
        assert current_traceparent().split("-")[1] == f"{root.get_span_context().trace_id:032x}"  # type: ignore[union-attr]
    (finished,) = span_exporter.get_finished_spans()
    assert finished.attributes == {}  # None values are dropped, as the SDK drops them
    assert finished.kind is SpanKind.PRODUCER


def test_lean_span_goes_to_a_sole_export_queue_without_a_copy(span_exporter) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    transport = Transport()
    queue = ExportQueue(transport, delay_ms=60_000)
    saved = (rt.processor, rt.provider._active_span_processor._span_processors)
    rt.processor = queue
    rt.provider._active_span_processor._span_processors = (queue,)
    try:
        parent = span_context_from_traceparent(TRACEPARENT)
        assert parent is not None
        span = start_lean_span(
            get_tracer("backend.infra.eventbus"),
            "process ticks",
            SpanKind.CONSUMER,
            {"messaging.message.id": "1-0", "eventbus.deliveries": 1},
            parent,
            [Link(parent)],
        )
        span.set_attribute("late", True)
        span.end()
        span.set_attribute("after.end", True)  # ignored: an ended span is immutable
        queued = list(queue._queue)
    finally:
        rt.processor, rt.provider._active_span_processor._span_processors = saved
        queue.shutdown(1000)
    assert queued == [span]
    copy = ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=dict(span.attributes),
        links=list(span._links),
        kind=span.kind,
        status=span._status,
        start_time=span.start_time,
        end_time=span._end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
    assert "after.end" not in span.attributes
    assert encode_spans([span]) == encode_spans([copy])
    assert transport.payloads == [encode_spans([span])]


def test_lean_span_keeps_the_sdk_link_limit_and_the_given_times(span_exporter) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    tracer = get_tracer("backend.infra.eventbus")
    links = [Link(SpanContext(0xA, n, is_remote=True)) for n in (1, 2, 3)]
    saved = rt.max_links
    rt.max_links = 2
    try:
        span = start_lean_span(
            tracer, "receive ticks", SpanKind.CLIENT, {}, None, links, start_time=1_000
        )
    finally:
        rt.max_links = saved
    span.end(end_time=2_000)
    (finished,) = span_exporter.get_finished_spans()
    assert [link.context.span_id for link in finished.links] == [2, 3]  # as the SDK keeps
    assert (finished.start_time, finished.end_time) == (1_000, 2_000)


def test_a_traceparent_linked_twice_is_parsed_once() -> None:
    from backend.infra.observability import links_from_traceparent

    (first,) = links_from_traceparent(TRACEPARENT, {"messaging.message.id": "1-0"})
    (second,) = links_from_traceparent(TRACEPARENT)
    assert second.context is first.context
    assert f"{second.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert dict(first.attributes or {}) == {"messaging.message.id": "1-0"}
    assert second.attributes is None
    assert links_from_traceparent("00-bad") == []


def test_a_lean_spans_block_makes_it_current_ends_it_and_records_what_escapes(
    span_exporter,  # type: ignore[no-untyped-def]
) -> None:
    from opentelemetry.trace import StatusCode

    from backend.infra.observability import lean_span

    tracer = get_tracer("microservices.execution")
    with lean_span(tracer, "order.submit", {"symbol": "BTCUSDT"}) as outer:
        inside = current_traceparent()
        try:
            with lean_span(tracer, "order.fill"):
                raise ValueError("no liquidity")
        except ValueError:
            pass
    assert inside is not None and inside.split("-")[2] == f"{outer.context.span_id:016x}"
    assert current_traceparent() is None
    fill, submit = span_exporter.get_finished_spans()
    assert (submit.name, submit.kind, dict(submit.attributes)) == (
        "order.submit",
        SpanKind.INTERNAL,
        {"symbol": "BTCUSDT"},
    )
    assert submit.status.status_code is StatusCode.UNSET
    assert fill.parent is not None and fill.parent.span_id == submit.context.span_id
    assert fill.status.status_code is StatusCode.ERROR
    assert fill.attributes["error.type"] == "ValueError"
    assert [event.name for event in fill.events] == ["exception"]
