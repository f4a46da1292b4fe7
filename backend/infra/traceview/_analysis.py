"""What the viewer computes from spans: critical path, self time, trace comparison, per-stage
latency split into stream wait / service / SQL, an order's timeline, the bot's decisions and
funnel, and the service map. Plain functions over `StoredSpan` lists, no I/O."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._store import StoredSpan

SERVER, CLIENT, PRODUCER, CONSUMER = "server", "client", "producer", "consumer"
DB_ATTRIBUTES = ("db.system.name", "db.system")
ORDER_KEYS = ("client_order_id", "order_id")
QUANTILES = (0.5, 0.99, 0.999)


def is_db(span: StoredSpan) -> bool:
    """A SQL statement's span (a CLIENT span carrying `db.system[.name]`)."""
    a = span.attributes
    return "db.system.name" in a or "db.system" in a


HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_HTTP_METHODS = HTTP_METHODS


def operation(span: StoredSpan) -> str:
    """The span's name, with the path added to an HTTP client span named by its method alone
    (`POST` becomes `POST /orders`), so calls to different routes are told apart."""
    if span.name not in _HTTP_METHODS:
        return span.name
    return operation_of(span.name, span.attributes)


def operation_of(name: str, a: Mapping[str, Any]) -> str:
    """`operation` of a span given by its name and attributes."""
    if name not in _HTTP_METHODS:
        return name
    path = a.get("url.path") or a.get("http.route") or a.get("url.template")
    if not path and isinstance(a.get("url.full"), str):
        path = urlsplit(a["url.full"]).path
    return f"{name} {path}" if path else name


def stage_key(span: StoredSpan) -> str:
    return f"{span.service}: {operation(span)}"


def _children(spans: Sequence[StoredSpan]) -> dict[str, list[StoredSpan]]:
    """Children by parent span id. A span whose parent is not in the trace but which links to
    a span of the same trace (a fan-in, an async consumer) hangs under the linked span."""
    ids = {s.span_id for s in spans}
    out: dict[str, list[StoredSpan]] = defaultdict(list)
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids and s.parent_span_id != s.span_id:
            out[s.parent_span_id].append(s)
            continue
        linked = [sid for tid, sid in s.links if tid == s.trace_id and sid in ids]
        if linked and linked[0] != s.span_id:
            out[linked[0]].append(s)
    return out


def roots(spans: Sequence[StoredSpan]) -> list[StoredSpan]:
    """Spans with no parent (or link) inside the trace, earliest first."""
    kids = {c.span_id for cs in _children(spans).values() for c in cs}
    return sorted((s for s in spans if s.span_id not in kids), key=lambda s: s.start_ns)


def tree_order(spans: Sequence[StoredSpan]) -> list[tuple[StoredSpan, int]]:
    """Depth-first (span, depth): children after their parent, siblings by start time."""
    children = _children(spans)
    out: list[tuple[StoredSpan, int]] = []
    seen: set[str] = set()

    def visit(s: StoredSpan, depth: int) -> None:
        if s.span_id in seen:
            return
        seen.add(s.span_id)
        out.append((s, depth))
        for c in sorted(children.get(s.span_id, []), key=lambda c: c.start_ns):
            visit(c, depth + 1)

    for r in roots(spans):
        visit(r, 0)
    for s in sorted(spans, key=lambda s: s.start_ns):  # a cycle's members, if any
        visit(s, 0)
    return out


# Critical path ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathSegment:
    """A stretch of the critical path: `span_id` was doing its own work (`work`), or had
    finished and the path waited for an asynchronous child (`wait`: a message in a stream)."""

    span_id: str
    service: str
    name: str
    start_ns: int
    end_ns: int
    kind: str

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def critical_path(spans: Sequence[StoredSpan]) -> list[PathSegment]:
    """The chain of spans that sets the trace's end-to-end latency, in time order.

    Walking back from the end of the trace, the child that finishes last is on the path, then
    the one that finishes last before it started, and so on; what no child covers is the
    parent's own time. A child that outlives its parent (the consumer of a message the parent
    produced) extends the parent's reach, and the gap after the parent ended is `wait`.
    """
    if not spans:
        return []
    children = _children(spans)
    reach: dict[str, int] = {}

    def reach_of(s: StoredSpan, depth: int = 0) -> int:
        if s.span_id not in reach:
            reach[s.span_id] = s.end_ns  # a guard against cycles
            if depth < 500:
                ends = [reach_of(c, depth + 1) for c in children.get(s.span_id, [])]
                reach[s.span_id] = max([s.end_ns, *ends])
        return reach[s.span_id]

    segments: list[PathSegment] = []

    def own(s: StoredSpan, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        if lo < s.end_ns:
            segments.append(
                PathSegment(s.span_id, s.service, s.name, lo, min(hi, s.end_ns), "work")
            )
        if hi > s.end_ns:
            segments.append(
                PathSegment(s.span_id, s.service, s.name, max(lo, s.end_ns), hi, "wait")
            )

    def walk(s: StoredSpan, lo: int, hi: int, depth: int) -> None:
        cursor = hi
        if depth < 500:
            for child in sorted(children.get(s.span_id, []), key=reach_of, reverse=True):
                if cursor <= lo:
                    break
                # A consumer of what the span produced (or anything starting after it ended)
                # does not hold the span up: it is on the path only where the path runs past
                # the span's end, and the time back to the span's end is waiting.
                detached = child.kind == CONSUMER or child.start_ns >= s.end_ns
                if detached and cursor <= s.end_ns:
                    continue
                if child.start_ns >= cursor:
                    continue  # overlaps a later child already on the path
                end = min(reach_of(child), cursor)
                start = max(child.start_ns, lo)
                if end <= lo:
                    continue
                own(s, end, cursor)
                walk(child, start, end, depth + 1)
                cursor = start
                if detached and cursor > s.end_ns:
                    own(s, max(lo, s.end_ns), cursor)
                    cursor = max(lo, s.end_ns)
        own(s, lo, cursor)

    tops = sorted(roots(spans), key=reach_of, reverse=True)
    cursor = reach_of(tops[0])
    for top in tops:
        if top.start_ns >= cursor:
            continue
        end = min(reach_of(top), cursor)
        walk(top, top.start_ns, end, 0)
        cursor = top.start_ns
    return sorted(segments, key=lambda g: (g.start_ns, g.end_ns))


# Self time -------------------------------------------------------------------------------------


def _union_ns(intervals: Iterable[tuple[int, int]]) -> int:
    total, cur_start, cur_end = 0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def self_ns(span: StoredSpan, children: Sequence[StoredSpan]) -> int:
    """The span's duration minus the time its children cover (clipped to the span)."""
    clipped = [
        (max(c.start_ns, span.start_ns), min(c.end_ns, span.end_ns))
        for c in children
        if c.end_ns > span.start_ns and c.start_ns < span.end_ns
    ]
    return max(0, (span.end_ns - span.start_ns) - _union_ns(clipped))


@dataclass(frozen=True)
class SelfTime:
    service: str
    operation: str
    count: int
    total_ms: float
    self_ms: float
    self_share: float
    """Of the summed self time of the trace (0..1)."""


def self_times(spans: Sequence[StoredSpan]) -> list[SelfTime]:
    """Self time per (service, operation), largest first: where the trace spent its time."""
    children = _children(spans)
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for s in spans:
        row = acc[(s.service, operation(s))]
        row[0] += 1
        row[1] += (s.end_ns - s.start_ns) / 1e6
        row[2] += self_ns(s, children.get(s.span_id, [])) / 1e6
    grand = sum(r[2] for r in acc.values()) or 1.0
    rows = [
        SelfTime(svc, op, int(r[0]), round(r[1], 3), round(r[2], 3), r[2] / grand)
        for (svc, op), r in acc.items()
    ]
    return sorted(rows, key=lambda r: (-r.self_ms, r.service, r.operation))


def self_time_by_service(spans: Sequence[StoredSpan]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for row in self_times(spans):
        out[row.service] += row.self_ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# Compare two traces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageDiff:
    stage: str
    count_a: int
    count_b: int
    ms_a: float
    ms_b: float
    self_ms_a: float
    self_ms_b: float

    @property
    def diff_ms(self) -> float:
        return round(self.ms_b - self.ms_a, 3)


@dataclass(frozen=True)
class AttributeDiff:
    stage: str
    key: str
    value_a: Any
    value_b: Any


@dataclass(frozen=True)
class Comparison:
    duration_ms_a: float
    duration_ms_b: float
    stages: list[StageDiff]
    """Matched by `service: operation`, the largest latency difference first."""
    attributes: list[AttributeDiff]
    """Attributes of a matched stage that differ between the two (first span of each)."""


def trace_duration_ms(spans: Sequence[StoredSpan]) -> float:
    if not spans:
        return 0.0
    return (max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e6


# Identifiers differ between any two trades; listing them would bury the differences that matter.
_UNINTERESTING = {
    "client_order_id",
    "order_id",
    "signal_id",
    "fill_id",
    "decision_id",
    "messaging.message.id",
    "cloudevents.event_id",
    "db.query.text",
    "db.statement",
    "url.full",
    "server.port",
    "client.port",
    "network.peer.port",
    "network.local.port",
}


def compare(a: Sequence[StoredSpan], b: Sequence[StoredSpan]) -> Comparison:
    """Stage-by-stage latency difference (b minus a) and differing attributes of two traces."""

    def group(spans: Sequence[StoredSpan]) -> dict[str, list[StoredSpan]]:
        out: dict[str, list[StoredSpan]] = defaultdict(list)
        for s in sorted(spans, key=lambda s: s.start_ns):
            out[stage_key(s)].append(s)
        return out

    ga, gb = group(a), group(b)
    ca, cb = _children(a), _children(b)

    def totals(
        group_spans: list[StoredSpan], kids: dict[str, list[StoredSpan]]
    ) -> tuple[float, float]:
        dur = sum(s.end_ns - s.start_ns for s in group_spans) / 1e6
        own = sum(self_ns(s, kids.get(s.span_id, [])) for s in group_spans) / 1e6
        return round(dur, 3), round(own, 3)

    stages = []
    attrs: list[AttributeDiff] = []
    for key in sorted(set(ga) | set(gb)):
        sa, sb = ga.get(key, []), gb.get(key, [])
        ma, oa = totals(sa, ca)
        mb, ob = totals(sb, cb)
        stages.append(StageDiff(key, len(sa), len(sb), ma, mb, oa, ob))
        if sa and sb:
            xa, xb = sa[0].attributes, sb[0].attributes
            for k in sorted(set(xa) | set(xb)):
                if k in _UNINTERESTING or xa.get(k) == xb.get(k):
                    continue
                attrs.append(AttributeDiff(key, k, xa.get(k), xb.get(k)))
    stages.sort(key=lambda d: (-abs(d.diff_ms), d.stage))
    return Comparison(trace_duration_ms(a), trace_duration_ms(b), stages, attrs)


# Tick-to-trade breakdown -----------------------------------------------------------------------


@dataclass(frozen=True)
class Quantile:
    value_ms: float
    trace_id: str
    """An example: the trace whose sample is this quantile."""


@dataclass(frozen=True)
class StageBreakdown:
    stage: str
    count: int
    wait: dict[float, Quantile]
    """Time in a stream: the consumer's start minus its producer's end."""
    service: dict[float, Quantile]
    """Time in the service itself: the stage minus its SQL and its calls to other services."""
    sql: dict[float, Quantile]
    total: dict[float, Quantile]


def quantiles(samples: Sequence[tuple[Any, ...]]) -> dict[float, Quantile]:
    """Nearest-rank p50/p99/p999 of (ms, trace id, ...) samples, each with its example trace."""
    if not samples:
        return {}
    ordered = sorted(samples)
    out = {}
    for q in QUANTILES:
        rank = max(1, math.ceil(q * len(ordered)))
        value, trace_id = ordered[rank - 1][:2]
        out[q] = Quantile(round(value, 3), trace_id)
    return out


TICK_TO_TRADE = "tick → order accepted"


COMPONENTS = ("wait", "service", "sql", "total")
Samples = dict[str, dict[str, list[tuple[float, str, int]]]]
"""Per stage, per component (`COMPONENTS`), the (ms, trace id, start ns of the span measured)
samples."""


def stage_samples(
    spans: Sequence[StoredSpan],
    *,
    since_ns: int | None = None,
    others: Mapping[tuple[Any, Any], Any] | None = None,
) -> Samples:
    """The samples behind `stage_breakdown`: per entry span (a SERVER or CONSUMER span, or a
    span entering a service) its stream wait, service time, SQL time and total, and per trace
    its tick-to-trade. With `since_ns`, only samples whose span (for tick-to-trade: whose
    first tick) starts at or after it; `others` finds producers linked from other traces."""
    by_trace: dict[str, list[StoredSpan]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    samples: Samples = defaultdict(lambda: {c: [] for c in COMPONENTS})
    by_id_all: dict[tuple[str, str], StoredSpan] = {}
    low = since_ns if since_ns is not None else -1
    for trace_id, trace in by_trace.items():
        children = _children(trace)
        by_id = {s.span_id: s for s in trace}
        for s in trace:
            if s.start_ns < low:
                continue
            parent = by_id.get(s.parent_span_id)
            entry = parent is None or parent.service != s.service or s.kind in (SERVER, CONSUMER)
            if not entry or is_db(s):
                continue
            key = stage_key(s)
            row = samples[key]
            if s.kind == CONSUMER:
                producer = parent
                if (producer is None or producer.kind != PRODUCER) and s.links:
                    if not by_id_all:  # built once, for consumers linked to their producer
                        by_id_all = {(x.trace_id, x.span_id): x for x in spans}
                    producer = next(
                        (
                            found
                            for lk in s.links
                            if (found := by_id_all.get(lk) or (others or {}).get(lk)) is not None
                        ),
                        producer,
                    )
                if producer is not None:
                    wait = max(0, s.start_ns - producer.end_ns) / 1e6
                    row["wait"].append((wait, trace_id, s.start_ns))
            sql_ns, out_ns = _local_costs(s, children)
            total = (s.end_ns - s.start_ns) / 1e6
            service = max(0.0, total - (sql_ns + out_ns) / 1e6)
            row["total"].append((total, trace_id, s.start_ns))
            row["sql"].append((sql_ns / 1e6, trace_id, s.start_ns))
            row["service"].append((service, trace_id, s.start_ns))
        tick_to_trade = _tick_to_trade(trace)
        if tick_to_trade is not None and tick_to_trade[0] >= low:
            samples[TICK_TO_TRADE]["total"].append((tick_to_trade[1], trace_id, tick_to_trade[0]))
    return samples


def stage_breakdown(spans: Sequence[StoredSpan]) -> list[StageBreakdown]:
    """Per pipeline stage (a span entering a service: a SERVER or CONSUMER span, or a root),
    p50/p99/p999 of the stream wait before it, the time in the service and the time in SQL;
    plus the whole tick-to-trade (`send market.tick` to the end of execution's order)."""
    out = [
        StageBreakdown(
            stage,
            len(rows["total"]),
            quantiles(rows["wait"]),
            quantiles(rows["service"]),
            quantiles(rows["sql"]),
            quantiles(rows["total"]),
        )
        for stage, rows in stage_samples(spans).items()
    ]
    return sort_stages(out)


def sort_stages(rows: list[StageBreakdown]) -> list[StageBreakdown]:
    """Tick-to-trade first, then the stages by name."""
    return sorted(rows, key=lambda b: (b.stage != TICK_TO_TRADE, b.stage))


def _local_costs(entry: StoredSpan, children: dict[str, list[StoredSpan]]) -> tuple[int, int]:
    """(SQL ns, ns in calls to other services) under `entry`, inside its service."""
    sql: list[tuple[int, int]] = []
    out: list[tuple[int, int]] = []
    stack = list(children.get(entry.span_id, []))
    while stack:
        s = stack.pop()
        if s.service != entry.service:
            continue
        clipped = (max(s.start_ns, entry.start_ns), min(s.end_ns, entry.end_ns))
        if is_db(s):
            sql.append(clipped)
        elif s.kind in (CLIENT, PRODUCER):
            out.append(clipped)
        else:
            stack.extend(children.get(s.span_id, []))
    return _union_ns(sql), _union_ns(out)


def _tick_to_trade(trace: Sequence[StoredSpan]) -> tuple[int, float] | None:
    """(first tick's start ns, tick-to-trade ms) of a trace that has both."""
    ticks = [s for s in trace if s.kind == PRODUCER and s.name == "send market.tick"]
    orders = [s for s in trace if s.name == "order.submit" and s.service == "execution"]
    if not ticks or not orders:
        return None
    first = min(t.start_ns for t in ticks)
    return first, (min(o.end_ns for o in orders) - first) / 1e6


# One order across its traces -------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    time_ns: int
    trace_id: str
    span_id: str
    service: str
    what: str
    """decision, risk, state, fill, booking, exit, cancel or event."""
    text: str


def carries_key(span: StoredSpan, key: str) -> bool:
    """True when one of the span's order-key attributes (`client_order_id`,
    `order.client_order_id`, `order_id`, ...) equals `key`."""
    return any(
        str(v) == key for k, v in span.attributes.items() if k.rsplit(".", 1)[-1] in ORDER_KEYS
    )


def _attr(span: StoredSpan, *names: str) -> Any:
    for n in names:
        if n in span.attributes:
            return span.attributes[n]
    return None


def exit_orders(spans: Sequence[StoredSpan], entry: str) -> list[str]:
    """The client order ids of the exits (stop, take-profit, emergency) that closed the
    position the order `entry` opened: their spans carry `entry.client_order_id`."""
    found = {
        str(s.attributes["client_order_id"])
        for s in spans
        if str(s.attributes.get("entry.client_order_id", "")) == entry
        and s.attributes.get("client_order_id")
        and str(s.attributes["client_order_id"]) != entry
    }
    return sorted(found)


def order_timeline(spans: Sequence[StoredSpan], key: str) -> list[TimelineEntry]:
    """The order's decisions, risk verdicts, state transitions, fills, bookings and exits, in
    time order, from every span (of every linked trace) that carries its id."""
    out = []
    for s in spans:
        if not carries_key(s, key):
            continue
        a = s.attributes
        entry: tuple[str, str] | None = None
        if s.name == "decide":
            entry = ("decision", f"{a.get('outcome', '?')} {a.get('reason', '')}".strip())
        elif s.name == "risk.check":
            verdict = "APPROVED" if a.get("approved") else "DENIED"
            entry = ("risk", f"{verdict} {a.get('reason', '')} ({a.get('trading_state', '')})")
        elif s.name == "order.fill":
            resting = " resting" if a.get("resting") else ""
            entry = (
                "fill",
                f"{a.get('side', '')} {a.get('quantity', '')} @ {a.get('price', '')} fee "
                f"{a.get('fee', '')} {a.get('liquidity', '')}{resting}, leaves "
                f"{a.get('leaves_quantity', '')}",
            )
        elif s.name == "order.cancel":
            entry = ("state", "CANCELED")
        elif s.name == "position.update":
            entry = ("booking", f"booked, position {a.get('position.quantity', '?')}")
        elif s.name.startswith("stop."):
            exit_id = a.get("client_order_id")
            by = f" by {exit_id}" if exit_id and str(exit_id) != key else ""
            entry = ("exit", f"{s.name} {a.get('reason', '')}{by}".strip())
        elif "order.status" in a:
            reason = f" {a['reason']}" if a.get("reason") else ""
            entry = ("state", f"{a['order.status']}{reason}")
        if entry is not None:
            out.append(TimelineEntry(s.end_ns, s.trace_id, s.span_id, s.service, *entry))
        times = s.event_times_ns
        for i, (name, attrs) in enumerate(s.events):
            if name != "exception":
                text = ", ".join(f"{k}={v}" for k, v in attrs.items())
                at = times[i] if i < len(times) and times[i] else s.end_ns
                out.append(
                    TimelineEntry(
                        at,
                        s.trace_id,
                        s.span_id,
                        s.service,
                        "event",
                        f"{name} {text}".strip(),
                    )
                )
    return sorted(out, key=lambda e: (e.time_ns, e.what))


def order_states(timeline: Sequence[TimelineEntry]) -> list[str]:
    """The order's successive states (repeats collapsed): ACCEPTED, PARTIALLY_FILLED, ..."""
    states: list[str] = []
    for e in timeline:
        if e.what == "state":
            state = e.text.split()[0]
            if not states or states[-1] != state:
                states.append(state)
        elif e.what == "fill":
            leaves = e.text.rsplit("leaves ", 1)[-1].strip()
            state = "FILLED" if _is_zero(leaves) else "PARTIALLY_FILLED"
            if not states or states[-1] != state:
                states.append(state)
    return states


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False


# The bot's decisions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BotDecision:
    trace_id: str
    span_id: str
    time_ns: int
    symbol: str
    outcome: str
    """ORDERED, SKIPPED, DENIED, REJECTED or ERROR."""
    reason: str
    detail: str
    model_version: str
    direction: str
    confidence: float | None
    client_order_id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    """Everything else the decision's spans said: the sizing's equity, constraint, ..."""


_DECISION_FIELDS = {
    "symbol",
    "outcome",
    "reason",
    "detail",
    "model_version",
    "direction",
    "confidence",
    "client_order_id",
}


def decisions(spans: Sequence[StoredSpan]) -> list[BotDecision]:
    """trading-bot's `decide` spans as decisions, newest first; the inputs are the attributes
    of the decision and of its `sizing` / `risk_check` / `submit_order` children."""
    children = _children(spans)
    out = []
    for s in spans:
        if s.service != "trading-bot" or s.name != "decide":
            continue
        a = s.attributes
        inputs: dict[str, Any] = {k: v for k, v in a.items() if k not in _DECISION_FIELDS}
        for c in children.get(s.span_id, []):
            if c.service == s.service and c.name in ("sizing", "risk_check", "submit_order"):
                for k, v in c.attributes.items():
                    if k not in _DECISION_FIELDS:
                        inputs[f"{c.name}.{k}"] = v
        confidence = a.get("confidence")
        out.append(
            BotDecision(
                trace_id=s.trace_id,
                span_id=s.span_id,
                time_ns=s.start_ns,
                symbol=str(a.get("symbol", "")),
                outcome=str(a.get("outcome", "")) or ("ERROR" if s.error else "UNKNOWN"),
                reason=str(a.get("reason", "")),
                detail=str(a.get("detail", "")),
                model_version=str(a.get("model_version", "")),
                direction=str(a.get("direction", "")),
                confidence=float(confidence) if isinstance(confidence, int | float) else None,
                client_order_id=str(a.get("client_order_id", "")),
                inputs=inputs,
            )
        )
    return sorted(out, key=lambda d: -d.time_ns)


def match_decision(d: BotDecision, text: str) -> bool:
    """Free-text search over a decision: symbol, outcome, reason, model, order id, inputs."""
    text = text.strip().lower()
    if not text:
        return True
    hay = " ".join(
        [d.symbol, d.outcome, d.reason, d.detail, d.model_version, d.client_order_id, d.trace_id]
        + [f"{k}={v}" for k, v in d.inputs.items()]
    ).lower()
    return all(word in hay for word in text.split())


@dataclass(frozen=True)
class FunnelRow:
    symbol: str
    model_version: str
    signals: int
    approved: int
    filled: int
    skipped_by_reason: dict[str, int]


def funnel_step(d: BotDecision) -> tuple[bool, str | None]:
    """(approved, the reason it was not ordered or None) of one decision: approved when its
    order was sent (ORDERED) or risk approved it."""
    approved = d.outcome == "ORDERED" or d.inputs.get("risk_check.approved") is True
    return approved, None if d.outcome == "ORDERED" else f"{d.outcome} {d.reason}".strip()


def filled_orders(spans: Iterable[StoredSpan]) -> set[str]:
    """The client order ids some `order.fill` span of `spans` fills."""
    return {
        str(s.attributes.get("client_order_id"))
        for s in spans
        if s.name == "order.fill" and s.attributes.get("client_order_id")
    }


FunnelCounts = dict[tuple[str, str], list[Any]]
"""(symbol, model version) -> [signals, approved, filled, {reason: count}]."""


def funnel_counts(decided: Iterable[BotDecision], filled_ids: AbstractSet[str]) -> FunnelCounts:
    rows: FunnelCounts = {}
    for d in decided:
        row = rows.setdefault((d.symbol, d.model_version), [0, 0, 0, defaultdict(int)])
        row[0] += 1
        approved, skipped = funnel_step(d)
        if approved:
            row[1] += 1
        if d.client_order_id and d.client_order_id in filled_ids:
            row[2] += 1
        if skipped is not None:
            row[3][skipped] += 1
    return rows


def funnel_rows(rows: FunnelCounts) -> list[FunnelRow]:
    return [
        FunnelRow(sym, model, r[0], r[1], r[2], dict(sorted(r[3].items(), key=lambda kv: -kv[1])))
        for (sym, model), r in sorted(rows.items())
    ]


def funnel(decided: Sequence[BotDecision], spans: Sequence[StoredSpan]) -> list[FunnelRow]:
    """signals → approved by risk → filled, per symbol and model version. A decision is
    approved when its order was sent (ORDERED) or risk approved it; filled when some span
    (in any trace of `spans`) is a fill of its client order id."""
    return funnel_rows(funnel_counts(decided, filled_orders(spans)))


# Service map -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    caller: str
    callee: str
    kind: str
    """http (CLIENT → SERVER), stream (PRODUCER → CONSUMER) or sql (a service's statements)."""
    requests: int
    errors: int
    window_s: float

    @property
    def rate_per_s(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def edge_calls(
    spans: Sequence[StoredSpan],
    *,
    since_ns: int | None = None,
    others: Mapping[tuple[Any, Any], Any] | None = None,
) -> Iterator[tuple[tuple[str, str, str], bool, int]]:
    """Each call on a service-map edge: ((caller, callee, kind), error, start ns of the callee
    span), for callee spans (or SQL statements) starting at or after `since_ns`; `others`
    finds parents and linked producers in other traces."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    extra = others or {}
    low = since_ns if since_ns is not None else -1
    for s in spans:
        if s.start_ns < low:
            continue
        if s.kind == CLIENT and is_db(s):
            system = _attr(s, *DB_ATTRIBUTES)
            yield (s.service, f"{system} (SQL)", "sql"), s.error, s.start_ns
            continue
        if s.kind not in (SERVER, CONSUMER):
            continue
        key = (s.trace_id, s.parent_span_id)
        parent = by_id.get(key) or extra.get(key)
        if s.kind == CONSUMER and (parent is None or parent.kind != PRODUCER):
            parent = next(
                (found for lk in s.links if (found := by_id.get(lk) or extra.get(lk)) is not None),
                parent,
            )
        if parent is None or parent.service == s.service:
            continue
        pair = (CLIENT, SERVER) if s.kind == SERVER else (PRODUCER, CONSUMER)
        if parent.kind != pair[0]:
            continue
        edge = (parent.service, s.service, "http" if s.kind == SERVER else "stream")
        yield edge, s.error or parent.error, s.start_ns


def edge_counts(spans: Sequence[StoredSpan]) -> dict[tuple[str, str, str], list[int]]:
    """(caller, callee, kind) -> [requests, errors] behind `service_map`."""
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for edge, error, _ in edge_calls(spans):
        row = counts[edge]
        row[0] += 1
        row[1] += int(error)
    return dict(counts)


def edges_of(counts: Mapping[tuple[str, str, str], Sequence[int]], window_s: float) -> list[Edge]:
    edges = [Edge(a, b, k, n, e, window_s) for (a, b, k), (n, e) in counts.items()]
    return sorted(edges, key=lambda e: (e.caller, e.callee))


def service_map(spans: Sequence[StoredSpan], window_s: float | None = None) -> list[Edge]:
    """Edges caller service → callee service from CLIENT/SERVER and PRODUCER/CONSUMER pairs
    (by parent, or by link for a consumer), and each service's SQL, with request and error
    counts; rates are over `window_s` (default: the spans' own time span)."""
    if not spans:
        return []
    if window_s is None:
        window_s = max((max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e9, 1e-9)
    return edges_of(edge_counts(spans), window_s)
