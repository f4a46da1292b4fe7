"""Bounded in-memory trace storage, fed with decoded OTLP export requests."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class StoredSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    links: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


class TraceStore:
    """Spans grouped by trace, the `max_traces` most recently updated kept."""

    def __init__(self, max_traces: int = 2000) -> None:
        self._traces: OrderedDict[str, list[StoredSpan]] = OrderedDict()
        self._max = max_traces
        self._lock = threading.Lock()
        self.received_spans = 0

    def add_otlp(self, payload: bytes) -> int:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest.FromString(payload)
        spans = []
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            service = str(resource.get("service.name", "unknown"))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        StoredSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=KINDS.get(s.kind, str(s.kind)),
                            service=service,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            error=s.status.code == 2,
                            links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                            events=[
                                (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                                for e in s.events
                            ],
                        )
                    )
        self.add(spans)
        return len(spans)

    def add(self, spans: list[StoredSpan]) -> None:
        with self._lock:
            for span in spans:
                trace = self._traces.get(span.trace_id)
                if trace is None:
                    trace = self._traces[span.trace_id] = []
                trace.append(span)
                self._traces.move_to_end(span.trace_id)
            while len(self._traces) > self._max:
                self._traces.popitem(last=False)
            self.received_spans += len(spans)

    def trace(self, trace_id: str) -> list[StoredSpan]:
        with self._lock:
            return sorted(self._traces.get(trace_id.lower(), []), key=lambda s: s.start_ns)

    def search(self, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Newest first; `query` matches a trace id, a span name, a service or any attribute."""
        query = query.strip().lower()
        with self._lock:
            items = list(self._traces.items())
        out = []
        for trace_id, spans in reversed(items):
            if query and not (query in trace_id or any(_matches(s, query) for s in spans)):
                continue
            out.append(summary(trace_id, spans))
            if len(out) >= limit:
                break
        return out


def _matches(span: StoredSpan, query: str) -> bool:
    if query in span.name.lower() or query in span.service.lower():
        return True
    return any(query == str(v).lower() for v in span.attributes.values())


def summary(trace_id: str, spans: list[StoredSpan]) -> dict[str, Any]:
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id or s.parent_span_id not in ids]
    root = min(roots or spans, key=lambda s: s.start_ns)
    return {
        "trace_id": trace_id,
        "root": f"{root.service}: {root.name}",
        "services": sorted({s.service for s in spans}),
        "spans": len(spans),
        "errors": sum(s.error for s in spans),
        "start_ns": start,
        "duration_ms": round((end - start) / 1e6, 3),
    }
