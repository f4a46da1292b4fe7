"""Decoding an OTLP/protobuf trace export request into plain spans.

The viewer stores what this returns; the test suite's OTLP receiver asserts on it, so both read
exactly what left a process. Needs `opentelemetry-proto` (the `otel` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class OtlpSpan:
    """One span as a collector receives it, with the attributes of its resource."""

    name: str
    kind: int
    """The OTLP enum: 1 internal, 2 server, 3 client, 4 producer, 5 consumer."""
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int
    """The OTLP enum: 0 unset, 1 ok, 2 error."""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def decode_spans(payload: bytes) -> list[OtlpSpan]:
    """The spans of one serialised `ExportTraceServiceRequest`, in the order they came."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(payload)
    spans = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    OtlpSpan(
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        resource=resource,
                        scope=ss.scope.name,
                        status_code=s.status.code,
                        events=[
                            (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in s.events
                        ],
                        links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans
