"""Bounded in-memory trace storage, fed with decoded OTLP export requests."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .otlp import OtlpSpan, decode_spans

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
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    """The attributes of the process that sent the span (`service.name`, host, version...)."""
    event_times_ns: list[int] = field(default_factory=list)
    """When each of `events` happened (Unix ns, 0 when not known), in the same order."""

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class TraceStore:
    """Spans grouped by trace, the `max_traces` most recently updated kept."""

    def __init__(self, max_traces: int = 2000) -> None:
        self._traces: OrderedDict[str, list[StoredSpan]] = OrderedDict()
        self._max = max_traces
        self._lock = threading.Lock()
        self.received_spans = 0

    def add_otlp(self, payload: bytes) -> int:
        spans = [_stored(span) for span in decode_spans(payload)]
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


def _stored(span: OtlpSpan) -> StoredSpan:
    return StoredSpan(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        service=str(span.resource.get("service.name", "unknown")),
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        attributes=span.attributes,
        error=span.status_code == 2,
        links=span.links,
        events=span.events,
        event_times_ns=span.event_times_ns,
        status_message=span.status_message,
        resource=span.resource,
    )


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
