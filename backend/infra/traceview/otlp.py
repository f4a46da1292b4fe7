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
    status_message: str = ""
    event_times_ns: list[int] = field(default_factory=list)
    """When each of `events` happened (Unix ns), in the same order."""


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
                        status_message=s.status.message,
                        events=[
                            (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in s.events
                        ],
                        links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        event_times_ns=[e.time_unix_nano for e in s.events],
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans


@dataclass
class OtlpLog:
    """One log record as a collector receives it, with the attributes of its resource."""

    time_ns: int
    severity: str
    body: Any
    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def decode_logs(payload: bytes) -> list[OtlpLog]:
    """The records of one serialised `ExportLogsServiceRequest`, in the order they came."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest.FromString(payload)
    records = []
    for rl in request.resource_logs:
        resource = {kv.key: _value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            for r in sl.log_records:
                records.append(
                    OtlpLog(
                        time_ns=r.time_unix_nano or r.observed_time_unix_nano,
                        severity=r.severity_text or _SEVERITIES.get(r.severity_number, ""),
                        body=_value(r.body) if r.HasField("body") else "",
                        trace_id=r.trace_id.hex(),
                        span_id=r.span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in r.attributes},
                        resource=resource,
                    )
                )
    return records


LogRow = tuple[int, bytes | None, bytes | None, str, str, str, str | bytes | None]
"""A log record as the span store writes it: time (ns), trace id, span id, severity, body,
service, and its attributes: JSON text, or (from OTLP) the serialised `LogRecord` they are
read back from (`log_attributes`), or None."""


def log_rows(payload: bytes, dumps: Any) -> list[LogRow]:
    """The records of one serialised `ExportLogsServiceRequest` as `LogRow`s; a non-string body
    as `dumps(body)`.

    The attributes stay in protobuf (the record re-serialised, in protobuf's C code) until
    someone reads the record's span: turning them into Python values and JSON cost about 7 of
    the 10 µs a record cost the collector's event loop, for lines that are mostly never read.
    """
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest.FromString(payload)
    rows: list[LogRow] = []
    append = rows.append
    for rl in request.resource_logs:
        service = "unknown"
        for kv in rl.resource.attributes:
            if kv.key == "service.name":
                service = str(_value(kv.value))
        for sl in rl.scope_logs:
            for r in sl.log_records:
                if r.HasField("body"):
                    body = _value(r.body)
                    if not isinstance(body, str):
                        body = dumps(body)
                else:
                    body = ""
                append(
                    (
                        r.time_unix_nano or r.observed_time_unix_nano,
                        r.trace_id or None,
                        r.span_id or None,
                        r.severity_text or _SEVERITIES.get(r.severity_number, ""),
                        body,
                        service,
                        r.SerializeToString() if len(r.attributes) else None,
                    )
                )
    return rows


def log_attributes(record: bytes) -> dict[str, Any]:
    """The attributes of a serialised `LogRecord` (as `log_rows` keeps them)."""
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    return {kv.key: _value(kv.value) for kv in LogRecord.FromString(record).attributes}


_SEVERITIES = {
    **dict.fromkeys(range(1, 5), "TRACE"),
    **dict.fromkeys(range(5, 9), "DEBUG"),
    **dict.fromkeys(range(9, 13), "INFO"),
    **dict.fromkeys(range(13, 17), "WARN"),
    **dict.fromkeys(range(17, 21), "ERROR"),
    **dict.fromkeys(range(21, 25), "FATAL"),
}
