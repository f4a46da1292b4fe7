"""What the viewer asks of a span store: the one interface between storage and pages.

The SQLite store (`_sqlstore.SqliteSpanStore`) implements it; the pages, the JSON API, the CLI
and the analyses (`_analysis`) use nothing else, so a store can be swapped without touching them.
Every method returns plain data (`StoredSpan`, `TraceSummary`, ...), never a cursor.

Added since the first version (nothing renamed or removed): `stage_quantiles` and
`StageQuantiles`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ._store import StoredSpan

BUSINESS_KEYS = ("client_order_id", "order_id", "symbol", "model_version")
"""Keys promoted to indexed columns: the attribute `<something>.client_order_id` etc. of a span
(e.g. `order.client_order_id`, `trading.symbol`) is indexed under the short name."""


@dataclass(frozen=True)
class SearchQuery:
    """Filters of the trace search; all given ones must hold for some span of a matching trace."""

    service: str | None = None
    operation: str | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    error: bool | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    """`key=value` pairs matched exactly against span attributes."""
    business_key: str | None = None
    """A client order id, an order id, a symbol or a model version (any of BUSINESS_KEYS)."""
    since_ns: int | None = None
    until_ns: int | None = None
    include_noise: bool = False
    """Health checks, metrics scrapes and idle polling are left out unless this is set."""
    limit: int = 20


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    root: str
    """`service: span name` of the root span."""
    services: tuple[str, ...]
    spans: int
    errors: int
    start_ns: int
    duration_ms: float
    matched_span_ids: tuple[str, ...] = ()
    """The spans that matched the search, so a page can highlight them."""


@dataclass(frozen=True)
class LogRecord:
    time_ns: int
    severity: str
    body: str
    service: str
    trace_id: str
    span_id: str
    attributes: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreStats:
    spans: int
    traces: int
    bytes_on_disk: int
    received_spans: int
    dropped_spans: int
    """Refused at ingest because the queue was full (counted, never blocking the sender)."""
    evicted_spans: int
    """Removed by retention (age or size)."""
    sampled_out_spans: int
    """Plain tick traces not kept by importance-aware retention."""
    rescued_spans: int = 0
    """Spans of a trace first sampled out, written after all when a later span of the trace
    made it important (so a kept trade trace is whole)."""
    early_decided_traces: int = 0
    """Traces decided before their hold ended because the spans held reached the bound."""
    rollup_restarts: int = 0
    """Roll-up processes that died and were replaced (their part rolled up again)."""


@dataclass(frozen=True)
class StageQuantiles:
    """Duration quantiles of one `service: operation` over a window."""

    count: int
    """Spans received in the window (before sampling)."""
    quantiles_ms: dict[float, float]
    """Quantile (0.5, 0.99, ...) to milliseconds, within 1 % of the exact value."""


class SpanQueries(Protocol):
    def trace(self, trace_id: str) -> list[StoredSpan]:
        """Every span of one trace, by start time; [] when unknown."""

    def search(self, query: SearchQuery) -> list[TraceSummary]:
        """Matching traces, newest first, at most `query.limit`."""

    def linked_traces(self, trace_id: str) -> list[str]:
        """Trace ids linked to this one in either direction (its spans' links, and spans of
        other traces whose links point into it)."""

    def order_traces(self, key: str) -> list[str]:
        """Every trace about one order, given its client order id or order id: the traces whose
        spans carry the key, plus, transitively, the traces linked to them in either direction."""

    def spans_between(self, since_ns: int, until_ns: int, limit: int) -> list[StoredSpan]:
        """Spans that started in the window, newest first (for statistics over a window)."""

    def stage_durations(self, since_ns: int, until_ns: int) -> dict[str, list[float]]:
        """Duration in ms per `service: operation` over the window, for per-stage quantiles."""

    def logs_for_span(self, trace_id: str, span_id: str) -> list[LogRecord]:
        """Log records (received over OTLP logs) carrying this span id."""

    def stage_quantiles(
        self, since_ns: int, until_ns: int, quantiles: Iterable[float] = (0.5, 0.99, 0.999)
    ) -> dict[str, StageQuantiles]:
        """Per `service: operation`, duration quantiles of every span RECEIVED in the window
        (whole minutes, counted before sampling) from a pre-aggregated histogram: fast over
        millions of spans, unlike `stage_durations`, which reads stored spans one by one."""

    def stats(self) -> StoreStats: ...
