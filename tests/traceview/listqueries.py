"""`SpanQueries` over a list of spans: the pages' tests run on it, the way they would on a store.

Straightforward scans, written from the Protocol's docstrings; the real store is tested
against the same docstrings in its own tests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from backend.infra.traceview._queries import (
    BUSINESS_KEYS,
    LogRecord,
    SearchQuery,
    StageQuantiles,
    StoreStats,
    TraceSummary,
)
from backend.infra.traceview._store import StoredSpan

NOISE = ("/health", "/metrics", "GET /health", "XREADGROUP")


def _noise(span: StoredSpan) -> bool:
    return any(span.name.startswith(n) for n in NOISE)


class ListQueries:
    def __init__(self, spans: list[StoredSpan], logs: list[LogRecord] | None = None) -> None:
        self.spans = list(spans)
        self.logs = list(logs or [])

    def _traces(self) -> dict[str, list[StoredSpan]]:
        out: dict[str, list[StoredSpan]] = defaultdict(list)
        for s in self.spans:
            out[s.trace_id].append(s)
        return out

    def trace(self, trace_id: str) -> list[StoredSpan]:
        return sorted(self._traces().get(trace_id, []), key=lambda s: s.start_ns)

    def _matches(self, s: StoredSpan, q: SearchQuery) -> bool:
        if q.service and s.service != q.service:
            return False
        if q.operation and s.name != q.operation:
            return False
        if q.min_ms is not None and s.duration_ms < q.min_ms:
            return False
        if q.max_ms is not None and s.duration_ms > q.max_ms:
            return False
        if q.error is not None and s.error != q.error:
            return False
        if any(str(s.attributes.get(k)) != v for k, v in q.attributes.items()):
            return False
        if q.business_key:
            keys = {
                str(v) for k, v in s.attributes.items() if k.rsplit(".", 1)[-1] in BUSINESS_KEYS
            }
            if q.business_key not in keys:
                return False
        return True

    def search(self, query: SearchQuery) -> list[TraceSummary]:
        out = []
        for trace_id, spans in self._traces().items():
            if not query.include_noise and all(_noise(s) for s in spans):
                continue
            start = min(s.start_ns for s in spans)
            if query.since_ns is not None and start < query.since_ns:
                continue
            matched = tuple(s.span_id for s in spans if self._matches(s, query))
            if not matched:
                continue
            ids = {s.span_id for s in spans}
            root = min((s for s in spans if s.parent_span_id not in ids), key=lambda s: s.start_ns)
            out.append(
                TraceSummary(
                    trace_id=trace_id,
                    root=f"{root.service}: {root.name}",
                    services=tuple(sorted({s.service for s in spans})),
                    spans=len(spans),
                    errors=sum(s.error for s in spans),
                    start_ns=start,
                    duration_ms=(max(s.end_ns for s in spans) - start) / 1e6,
                    matched_span_ids=matched,
                )
            )
        out.sort(key=lambda t: -t.start_ns)
        return out[: query.limit]

    def linked_traces(self, trace_id: str) -> list[str]:
        mine = self._traces().get(trace_id, [])
        ids = {t for s in mine for t, _ in s.links}
        ids |= {s.trace_id for s in self.spans if any(t == trace_id for t, _ in s.links)}
        ids.discard(trace_id)
        return sorted(ids)

    def order_traces(self, key: str) -> list[str]:
        found = {
            s.trace_id
            for s in self.spans
            if any(
                str(v) == key
                for k, v in s.attributes.items()
                if k.rsplit(".", 1)[-1] in ("client_order_id", "order_id")
            )
        }
        todo = list(found)
        while todo:
            for other in self.linked_traces(todo.pop()):
                if other not in found:
                    found.add(other)
                    todo.append(other)
        return sorted(found)

    def spans_between(self, since_ns: int, until_ns: int, limit: int) -> list[StoredSpan]:
        inside = [s for s in self.spans if since_ns <= s.start_ns <= until_ns]
        return sorted(inside, key=lambda s: -s.start_ns)[:limit]

    def stage_durations(self, since_ns: int, until_ns: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for s in self.spans_between(since_ns, until_ns, len(self.spans)):
            out[f"{s.service}: {s.name}"].append(s.duration_ms)
        return dict(out)

    def stage_quantiles(
        self, since_ns: int, until_ns: int, quantiles: Iterable[float] = (0.5, 0.99, 0.999)
    ) -> dict[str, StageQuantiles]:
        out = {}
        for stage, values in self.stage_durations(since_ns, until_ns).items():
            ordered = sorted(values)
            at = {q: ordered[max(1, math.ceil(q * len(ordered))) - 1] for q in quantiles}
            out[stage] = StageQuantiles(len(ordered), at)
        return out

    def logs_for_span(self, trace_id: str, span_id: str) -> list[LogRecord]:
        return [r for r in self.logs if r.trace_id == trace_id and r.span_id == span_id]

    def stats(self) -> StoreStats:
        return StoreStats(len(self.spans), len(self._traces()), 0, len(self.spans), 0, 0, 0)
