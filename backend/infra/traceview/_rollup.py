"""Per-minute roll-ups of the stored spans, so the window pages (/stages, /decisions, /map) read
a few hundred rows instead of tens of thousands of spans.

The store's writer hands `Rollup` every span it writes (kept spans only, so every example trace
a number links to was stored), in a child process of its own (`_rollproc`) or in its thread.
A trace is rolled up once `settle_s` have passed since its first span was written (its other
spans have arrived by then), with the same functions the pages use over spans (`_analysis`),
and the result is added to the `rollups` row of its minute:

- kind `wait` / `service` / `sql` / `total`, key the stage (`service: operation`, or
  tick-to-trade): the count, the sum, and a latency histogram (`Histogram`: fixed 2 % wide log
  buckets, plus an exact zero bucket, each with one example trace id);
- kind `edge`, key `caller␟callee␟kind`: calls and errors on a service-map edge;
- kind `signals` / `approved` / `filled`, key `symbol␟model version`, and `skip`, key
  `symbol␟model version␟reason`: the decisions funnel. A fill is matched to its decision by
  client order id while the decision is among the newest `_MEMORY` seen (counted once, in
  the decision's minute).

A span that comes more than `settle_s` after the first span of its trace is rolled up with
the other late spans of that trace, without the spans rolled up before (its parent is still
found among the newest `_MEMORY` spans). `watermark_ns` is the start of the earliest span
written but not yet rolled up; the pages read roll-ups for the minutes before it and the
spans themselves after it, so nothing is counted twice or missed. A restart deletes the rows
from the watermark's minute on and rolls the spans stored since then up again (what the
writer held in memory is not lost with the process).

Eviction: rows older than the store's `max_age_s` are deleted with the spans. Eviction by size
removes spans, not roll-ups (they are a few kilobytes a minute): the numbers of a minute stay
what was stored then, and an example trace may since have been evicted (its page says so).
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from . import _analysis as analysis
from ._store import KINDS, StoredSpan

_KIND_CODES = {name: code for code, name in KINDS.items()}

__all__ = ["Histogram", "Rollup", "WindowRollup", "read_window"]

MINUTE_NS = 60_000_000_000
SEP = "\x1f"
BUCKET_BASE = math.log(1.02)
"""Bucket b >= 1 holds durations in [1.02**(b-1), 1.02**b) ns; bucket 0 holds zero."""
STAGE_KINDS = ("wait", "service", "sql", "total")
EDGE = "edge"
SIGNALS, APPROVED, FILLED, SKIP = "signals", "approved", "filled", "skip"
_MEMORY = 200_000
"""Spans, decisions and fills remembered across traces (parents, linked producers, fills)."""
NO_WATERMARK = 1 << 62
_NO_ATTRIBUTES: dict[str, Any] = {}
"""The attributes of a span handed over without them (shared, never written)."""

ATTRIBUTE_NAMES = frozenset(
    {"decide", "sizing", "risk_check", "submit_order", "order.fill", *analysis.HTTP_METHODS}
)
"""Spans whose attributes the roll-ups read whatever they are (decisions, fills, HTTP calls
named by their method alone); any other span's only when it is a SQL statement."""


def needs_attributes(shape_text: str) -> bool:
    """Whether a span with these attribute keys (a JSON list) is a SQL statement."""
    return "db.system" in shape_text


SCHEMA = """
CREATE TABLE IF NOT EXISTS rollups(
    minute INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    errors INTEGER NOT NULL, sum REAL NOT NULL, hist BLOB NOT NULL,
    PRIMARY KEY(minute, kind, key)) WITHOUT ROWID;
"""


def bucket_of_ms(value_ms: float) -> int:
    ns = value_ms * 1e6
    return 0 if ns < 1.0 else 1 + int(math.log(ns) / BUCKET_BASE)


def bucket_value_ms(bucket: int) -> float:
    """The middle of a bucket, in milliseconds (within 1 % of any value in it)."""
    return 0.0 if bucket <= 0 else math.exp((bucket - 0.5) * BUCKET_BASE) / 1e6


@dataclass
class Histogram:
    """Counts per bucket, each bucket with one example trace id (16 bytes)."""

    buckets: dict[int, list[Any]] = field(default_factory=dict)

    def add(self, value_ms: float, trace_id: bytes, n: int = 1) -> None:
        b = bucket_of_ms(value_ms)
        found = self.buckets.get(b)
        if found is None:
            self.buckets[b] = [n, trace_id]
        else:
            found[0] += n

    def merge(self, other: Histogram) -> None:
        for b, (n, tid) in other.buckets.items():
            found = self.buckets.get(b)
            if found is None:
                self.buckets[b] = [n, tid]
            else:
                found[0] += n

    def encode(self) -> bytes:
        """`n` (uint16) buckets, their counts (uint32), then their example trace ids."""
        order = sorted(self.buckets)
        n = len(order)
        out = bytearray(struct.pack(f"<H{n}H{n}I", n, *order, *(self.buckets[b][0] for b in order)))
        for b in order:
            out += self.buckets[b][1]
        return bytes(out)

    @classmethod
    def decode(cls, blob: bytes) -> Histogram:
        if not blob:
            return cls()
        (n,) = struct.unpack_from("<H", blob)
        numbers = struct.unpack_from(f"<{n}H{n}I", blob, 2)
        base = 2 + 6 * n
        return cls(
            {
                numbers[i]: [numbers[n + i], bytes(blob[base + 16 * i : base + 16 * (i + 1)])]
                for i in range(n)
            }
        )

    @property
    def count(self) -> int:
        return sum(n for n, _ in self.buckets.values())

    def quantiles(self) -> dict[float, analysis.Quantile]:
        """Nearest-rank p50/p99/p999, each the middle of its bucket with the bucket's example."""
        total = self.count
        if not total:
            return {}
        out = {}
        order = sorted(self.buckets.items())
        for q in analysis.QUANTILES:
            rank = max(1, math.ceil(q * total))
            seen = 0
            for b, (n, tid) in order:
                seen += n
                if seen >= rank:
                    out[q] = analysis.Quantile(round(bucket_value_ms(b), 3), tid.hex())
                    break
        return out


@dataclass
class _Row:
    n: int = 0
    errors: int = 0
    sum: float = 0.0
    hist: Histogram | None = None

    def merge(self, other: _Row) -> None:
        self.n += other.n
        self.errors += other.errors
        self.sum += other.sum
        if other.hist is not None:
            if self.hist is None:
                self.hist = Histogram()
            self.hist.merge(other.hist)


RowKey = tuple[int, str, str]
"""(minute, kind, key)."""


def rows_of(
    spans: Sequence[Any],
    *,
    since_ns: int | None = None,
    others: Mapping[tuple[Any, Any], Any] | None = None,
    fills: Iterable[str] = (),
    decided: dict[str, tuple[int, str, str]] | None = None,
) -> dict[RowKey, _Row]:
    """The roll-up rows of `spans` (whole traces): stage samples, edges and the funnel, each
    in the minute its span starts, counting only what starts at or after `since_ns`.

    `decided` (client order id -> (minute, symbol, model)) learns the decisions seen, so a
    fill among `fills` (client order ids not counted before) is counted in its decision's
    minute."""
    out: dict[RowKey, _Row] = defaultdict(_Row)
    for stage, components in analysis.stage_samples(
        spans, since_ns=since_ns, others=others
    ).items():
        for kind, samples in components.items():
            minute = -1
            buckets: dict[int, list[Any]] = {}
            row = _Row()
            for value, trace_id, start in samples:
                if start // MINUTE_NS != minute:
                    minute = start // MINUTE_NS
                    row = out[(minute, kind, stage)]
                    if row.hist is None:
                        row.hist = Histogram()
                    buckets = row.hist.buckets
                row.n += 1
                row.sum += value
                ns = value * 1e6
                b = 0 if ns < 1.0 else 1 + int(math.log(ns) / BUCKET_BASE)
                found = buckets.get(b)
                if found is None:
                    buckets[b] = [1, _tid(trace_id)]
                else:
                    found[0] += 1
    for (caller, callee, kind), error, start in analysis.edge_calls(
        spans, since_ns=since_ns, others=others
    ):
        row = out[(start // MINUTE_NS, EDGE, SEP.join((caller, callee, kind)))]
        row.n += 1
        row.errors += int(error)
    low = since_ns if since_ns is not None else -1
    # A decision reads its span and its children in trading-bot: only those are looked at.
    bot = [s for s in spans if s.service == "trading-bot"]
    decisions = [d for d in analysis.decisions(bot) if d.time_ns >= low]
    known = decided if decided is not None else {}
    for d in decisions:
        minute = d.time_ns // MINUTE_NS
        key = SEP.join((d.symbol, d.model_version))
        out[(minute, SIGNALS, key)].n += 1
        approved, skipped = analysis.funnel_step(d)
        if approved:
            out[(minute, APPROVED, key)].n += 1
        if skipped is not None:
            out[(minute, SKIP, SEP.join((d.symbol, d.model_version, skipped)))].n += 1
        if d.client_order_id:
            known[d.client_order_id] = (minute, d.symbol, d.model_version)
    for coid in fills:
        decision = known.get(coid)
        if decision is not None:
            minute, symbol, model = decision
            out[(minute, FILLED, SEP.join((symbol, model)))].n += 1
    return out


def _tid(trace_id: str | bytes) -> bytes:
    """A trace id as 16 bytes (the writer hands spans over with their ids as bytes)."""
    return trace_id if isinstance(trace_id, bytes) else bytes.fromhex(trace_id)


class RollSpan(NamedTuple):
    """A written span as the roll-ups read it: `StoredSpan`'s fields that `_analysis` uses, in
    a tuple. Most hold only plain values (no attributes, no links), so the garbage collector
    stops tracking them at once: a second of spans rolled up at a time does not set off full
    collections over the whole heap."""

    trace_id: Any
    span_id: Any
    parent_span_id: Any
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    links: Sequence[tuple[Any, Any]]


class SpanRef(NamedTuple):
    """What a span of another trace is needed for (a caller, a linked producer): a tuple of
    plain values, which the garbage collector does not track."""

    service: str
    kind: str
    end_ns: int
    error: bool


_CALLERS = frozenset({analysis.CLIENT, analysis.PRODUCER})


class RecordSpans:
    """Written records (`_decode.Record`) as spans for the roll-ups, cheaply: ids stay bytes
    (the roll-ups accept either), and only the attributes the roll-ups read are decoded."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[str, ...]] = {}

    def __call__(self, recs: Sequence[Any]) -> list[RollSpan]:
        wanted = self._shapes
        out: list[RollSpan] = []
        append = out.append
        span = RollSpan
        kinds = KINDS
        names = ATTRIBUTE_NAMES
        no_links: tuple[tuple[bytes, bytes], ...] = ()
        for rec in recs:
            shape_text, values, extra, name = rec[9], rec[10], rec[12], rec[4]
            attributes: dict[str, Any] = _NO_ATTRIBUTES
            if (
                shape_text is not None
                and values
                and (name in names or needs_attributes(shape_text))
            ):
                keys = wanted.get(shape_text)
                if keys is None:
                    keys = wanted[shape_text] = tuple(orjson.loads(shape_text))
                attributes = dict(zip(keys, orjson.loads(values), strict=False))
            links: Sequence[tuple[bytes, bytes]] = no_links
            if extra:
                links = tuple(
                    (bytes.fromhex(t), bytes.fromhex(s))
                    for t, s in orjson.loads(extra).get("l", ())
                )
            append(
                span(
                    rec[0],
                    rec[1],
                    rec[2] or b"",
                    name,
                    kinds.get(rec[5], "unspecified"),
                    rec[3],
                    rec[6],
                    rec[7],
                    attributes,
                    bool(rec[8]),
                    links,
                )
            )
        if len(wanted) > 50_000:
            wanted.clear()
        return out


def slim(recs: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Written records cut to what `RecordSpans` reads (the same positions), for the pipe to
    the roll-up process: attribute values only where the roll-ups read them."""
    names = ATTRIBUTE_NAMES
    out: list[tuple[Any, ...]] = []
    append = out.append
    for r in recs:
        shape = r[9]
        if shape is not None and (r[4] in names or "db.system" in shape):
            append((*r[:9], shape, r[10], None, r[12]))
        else:
            append((*r[:9], None, None, None, r[12]))
    return out


class Rollup:
    """The writer's side: traces waiting to settle, and rows not yet written. Traces are
    rolled up every `interval_s` (many at once, so each row is written once per interval)."""

    def __init__(self, settle_s: float, interval_s: float = 1.0) -> None:
        self.settle_s = settle_s
        self.interval_s = interval_s
        self._shapes: dict[str, tuple[tuple[str, ...], bool]] = {}
        self._last_roll = -math.inf
        # The writer's records (tuples of plain values: the garbage collector leaves them be,
        # where as many spans as objects would make every full collection slow).
        # Per trace: [first seen, its records, the earliest start among them], so the
        # watermark after a roll-up reads one number a trace, not every span.
        self._pending: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._min_pending = NO_WATERMARK
        self._recent: OrderedDict[tuple[Any, Any], SpanRef] = OrderedDict()
        self._decided: OrderedDict[str, tuple[int, str, str]] = OrderedDict()
        self._filled: OrderedDict[str, None] = OrderedDict()
        self._rows: dict[RowKey, _Row] = defaultdict(_Row)

    def add(self, records: Iterable[Any], now: float) -> None:
        """Records written (`_decode.Record`: 0 trace id, 6 start ns)."""
        pending = self._pending
        low = self._min_pending
        for rec in records:
            start = rec[6]
            found = pending.get(rec[0])
            if found is None:
                pending[rec[0]] = [now, [rec], start]
            else:
                found[1].append(rec)
                if start < found[2]:
                    found[2] = start
            if start < low:
                low = start
        self._min_pending = low

    def settle(self, now: float, *, force: bool = False) -> None:
        """Roll up the traces whose first span was written `settle_s` ago (all with `force`),
        at most once every `interval_s`."""
        if not force and now - self._last_roll < self.interval_s:
            return
        self._last_roll = now
        pending = self._pending
        ready: list[list[Any]] = []
        while pending:
            trace_id, (first_seen, records, _) = next(iter(pending.items()))
            if not force and now - first_seen < self.settle_s:
                break
            del pending[trace_id]
            ready.append(records)
        if ready:
            self.roll_records(ready)
            self._min_pending = min((held[2] for held in pending.values()), default=NO_WATERMARK)

    def roll(self, spans: Sequence[Any], since_ns: int | None = None) -> None:
        """Add the rows of `spans` (whole traces: `StoredSpan`s or `RollSpan`s)."""
        recent = self._recent
        fills = [coid for coid in analysis.filled_orders(spans) if coid not in self._filled]
        for coid in fills:
            self._filled[coid] = None
        for key, row in rows_of(
            spans, since_ns=since_ns, others=recent, fills=fills, decided=self._decided
        ).items():
            self._rows[key].merge(row)
        for s in spans:
            if s.kind in _CALLERS:
                recent[(s.trace_id, s.span_id)] = SpanRef(s.service, s.kind, s.end_ns, s.error)
        for lru in (recent, self._decided, self._filled):
            while len(lru) > _MEMORY:
                lru.popitem(last=False)

    def roll_records(self, traces: Sequence[list[Any]]) -> None:
        """`roll` of written records (`_decode.Record`s, or `slim` ones), one list per whole
        trace: the same rows as `roll(RecordSpans()(records))`, in one pass over the records
        without making spans of them (what rolling up costs a span is mostly that)."""
        if len(self._shapes) > 50_000:
            self._shapes.clear()
        rows, fills, callers = _rows_of_records(
            traces, others=self._recent, shapes=self._shapes, decided=self._decided
        )
        new_fills = [coid for coid in fills if coid not in self._filled]
        for coid in new_fills:
            self._filled[coid] = None
        known = self._decided
        for coid in new_fills:
            decision = known.get(coid)
            if decision is not None:
                minute, symbol, model = decision
                rows[(minute, FILLED, SEP.join((symbol, model)))].n += 1
        for key, row in rows.items():
            self._rows[key].merge(row)
        recent = self._recent
        kind_names = KINDS
        for r in callers:
            recent[(r[0], r[1])] = SpanRef(r[3], kind_names[r[5]], r[7], bool(r[8]))
        for lru in (recent, self._decided, self._filled):
            while len(lru) > _MEMORY:
                lru.popitem(last=False)

    @property
    def watermark_ns(self) -> int:
        """The earliest start among spans written but not rolled up (`NO_WATERMARK`: none)."""
        return self._min_pending

    def take(self) -> list[PlainRow]:
        """The rows rolled up since the last call, as plain values (for a pipe), and forget
        them."""
        rows, self._rows = self._rows, defaultdict(_Row)
        return [
            (key, row.n, row.errors, row.sum, None if row.hist is None else row.hist.buckets)
            for key, row in rows.items()
        ]

    def write(self, db: sqlite3.Connection) -> None:
        """Add the rows rolled up since the last call to the file (inside the writer's
        transaction)."""
        write_rows(db, self.take())


_SERVER_CODE, _CLIENT_CODE, _PRODUCER_CODE, _CONSUMER_CODE = 2, 3, 4, 5
"""OTLP span kinds, as records carry them."""
_DECISION_PARTS = frozenset({"sizing", "risk_check", "submit_order"})
_ABSENT = object()


def _links_of(extra: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
    if not extra:
        return ()
    return tuple((bytes.fromhex(t), bytes.fromhex(s)) for t, s in orjson.loads(extra).get("l", ()))


def _rows_of_records(
    traces: Sequence[list[Any]],
    *,
    others: Mapping[tuple[Any, Any], SpanRef],
    shapes: dict[str, tuple[tuple[str, ...], bool]],
    decided: dict[str, tuple[int, str, str]],
) -> tuple[dict[RowKey, _Row], set[str], list[Any]]:
    """`rows_of` over records, one list per trace (fills not counted yet): the rows, the client
    order ids filled, and the CLIENT / PRODUCER records (what later traces may need of them).

    Mirrors `_analysis.stage_samples`, `edge_calls`, `decisions` and `filled_orders` step for
    step (the test `test_rows_of_records_equal_rows_of_spans` holds them to the same rows);
    attributes are decoded only where those read them (`RecordSpans`)."""
    out: dict[RowKey, _Row] = defaultdict(_Row)
    log = math.log
    base = BUCKET_BASE
    names = ATTRIBUTE_NAMES
    http = analysis.HTTP_METHODS
    loads = orjson.loads
    union = analysis._union_ns
    stage_keys: dict[tuple[str, str], str] = {}
    everything: dict[tuple[Any, Any], Any] | None = None
    bot: list[Any] = []
    fills: set[str] = set()
    callers: list[Any] = []
    server, client, producer, consumer = _SERVER_CODE, _CLIENT_CODE, _PRODUCER_CODE, _CONSUMER_CODE

    def shape_of(text: str) -> tuple[tuple[str, ...], bool]:
        found = shapes.get(text)
        if found is None:
            keys = tuple(loads(text))
            found = shapes[text] = (keys, "db.system.name" in keys or "db.system" in keys)
        return found

    def attrs_of(r: Any) -> dict[str, Any]:
        shape = r[9]
        if shape is None or not r[10] or not (r[4] in names or "db.system" in shape):
            return _NO_ATTRIBUTES
        return dict(zip(shape_of(shape)[0], loads(r[10]), strict=False))

    def is_db(r: Any) -> bool:
        shape = r[9]
        return shape is not None and "db.system" in shape and bool(r[10]) and shape_of(shape)[1]

    def ref(x: Any) -> tuple[str, int, int, bool]:
        """(service, kind code, end ns, error) of a record or a `SpanRef`."""
        if type(x) is SpanRef:
            return x.service, _KIND_CODES.get(x.kind, 0), x.end_ns, x.error
        return x[3], x[5], x[7], bool(x[8])

    def linked(r: Any) -> Any:
        """The first linked span found among the records or `others` (`None`: none)."""
        nonlocal everything
        if everything is None:
            everything = {(x[0], x[1]): x for t in traces for x in t}
        for lk in _links_of(r[12]):
            found = everything.get(lk) or others.get(lk)
            if found is not None:
                return found
        return None

    def add(key: RowKey, value: float, tid: bytes) -> None:
        row = out[key]
        hist = row.hist
        if hist is None:
            hist = row.hist = Histogram()
        row.n += 1
        row.sum += value
        ns = value * 1e6
        b = 0 if ns < 1.0 else 1 + int(log(ns) / base)
        found = hist.buckets.get(b)
        if found is None:
            hist.buckets[b] = [1, tid]
        else:
            found[0] += 1

    for trace in traces:
        tid = trace[0][0]
        by_id = {r[1]: r for r in trace}
        children: dict[Any, list[Any]] = {}
        for r in trace:
            p = r[2]
            if p and p in by_id and p != r[1]:
                found_kids = children.get(p)
                if found_kids is None:
                    children[p] = [r]
                else:
                    found_kids.append(r)
                continue
            if r[12]:
                inside = [s for t, s in _links_of(r[12]) if t == tid and s in by_id]
                if inside and inside[0] != r[1]:
                    children.setdefault(inside[0], []).append(r)
        first_tick: int | None = None
        first_order_end: int | None = None
        for r in trace:
            service, name, kind, start, end = r[3], r[4], r[5], r[6], r[7]
            if kind == producer and name == "send market.tick":
                if first_tick is None or start < first_tick:
                    first_tick = start
            elif name == "order.submit" and service == "execution":
                if first_order_end is None or end < first_order_end:
                    first_order_end = end
            elif name == "order.fill":
                coid = attrs_of(r).get("client_order_id")
                if coid:
                    fills.add(str(coid))
            if kind in (client, producer):
                callers.append(r)
            if service == "trading-bot":
                bot.append(r)
            p = r[2]
            parent = by_id.get(p) if p else None
            db = r[9] is not None and is_db(r)
            minute = start // MINUTE_NS
            # The service map (`edge_calls`).
            if db and kind == client:
                a = attrs_of(r)
                system = a["db.system.name"] if "db.system.name" in a else a.get("db.system")
                row = out[(minute, EDGE, SEP.join((service, f"{system} (SQL)", "sql")))]
                row.n += 1
                row.errors += int(bool(r[8]))
            elif kind in (server, consumer):
                caller = parent if parent is not None else (others.get((tid, p)) if p else None)
                if kind == consumer and (caller is None or ref(caller)[1] != producer):
                    caller = linked(r) or caller
                if caller is not None:
                    c_service, c_kind, _, c_error = ref(caller)
                    if c_service != service and c_kind == (client if kind == server else producer):
                        row = out[
                            (
                                minute,
                                EDGE,
                                SEP.join(
                                    (c_service, service, "http" if kind == server else "stream")
                                ),
                            )
                        ]
                        row.n += 1
                        row.errors += int(bool(r[8]) or c_error)
            # The stages (`stage_samples`).
            if db or not (parent is None or parent[3] != service or kind in (server, consumer)):
                continue
            if name in http:
                stage = f"{service}: {analysis.operation_of(name, attrs_of(r))}"
            else:
                known_stage = stage_keys.get((service, name))
                if known_stage is None:
                    known_stage = stage_keys[(service, name)] = f"{service}: {name}"
                stage = known_stage
            if kind == consumer:
                source = parent
                if (source is None or source[5] != producer) and r[12]:
                    source = linked(r) or source
                if source is not None:
                    add((minute, "wait", stage), max(0, start - ref(source)[2]) / 1e6, tid)
            sql_ns = out_ns = 0
            kids = children.get(r[1])
            if kids:
                sql: list[tuple[int, int]] = []
                calls: list[tuple[int, int]] = []
                stack = list(kids)
                while stack:
                    s = stack.pop()
                    if s[3] != service:
                        continue
                    clipped = (max(s[6], start), min(s[7], end))
                    if is_db(s):
                        sql.append(clipped)
                    elif s[5] == client or s[5] == producer:
                        calls.append(clipped)
                    else:
                        stack.extend(children.get(s[1], ()))
                # One interval (the usual case) is its own union.
                if sql:
                    sql_ns = sql[0][1] - sql[0][0] if len(sql) == 1 else union(sql)
                if calls:
                    out_ns = calls[0][1] - calls[0][0] if len(calls) == 1 else union(calls)
            total = (end - start) / 1e6
            add((minute, "service", stage), max(0.0, total - (sql_ns + out_ns) / 1e6), tid)
            add((minute, "sql", stage), sql_ns / 1e6, tid)
            add((minute, "total", stage), total, tid)
        if first_tick is not None and first_order_end is not None:
            add(
                (first_tick // MINUTE_NS, "total", analysis.TICK_TO_TRADE),
                (first_order_end - first_tick) / 1e6,
                tid,
            )
    # The decisions funnel (`decisions`: a decide span of trading-bot and its parts).
    decides = [r for r in bot if r[4] == "decide"]
    if decides:
        ids = {r[1] for r in bot}
        parts: dict[Any, list[Any]] = {}
        for r in bot:
            p = r[2]
            if p and p in ids and p != r[1]:
                if r[4] in _DECISION_PARTS:
                    parts.setdefault(p, []).append(r)
                continue
            if r[12]:
                inside = [s for t, s in _links_of(r[12]) if t == r[0] and s in ids]
                if inside and inside[0] != r[1] and r[4] in _DECISION_PARTS:
                    parts.setdefault(inside[0], []).append(r)
        made = []
        for r in decides:
            a = attrs_of(r)
            approved = a.get("risk_check.approved", _ABSENT)
            for c in parts.get(r[1], ()):
                if c[4] == "risk_check":
                    approved = attrs_of(c).get("approved", approved)
            outcome = str(a.get("outcome", "")) or ("ERROR" if r[8] else "UNKNOWN")
            made.append(
                (
                    r[6],
                    str(a.get("symbol", "")),
                    str(a.get("model_version", "")),
                    outcome,
                    str(a.get("reason", "")),
                    str(a.get("client_order_id", "")),
                    outcome == "ORDERED" or approved is True,
                )
            )
        made.sort(key=lambda d: -d[0])
        for time_ns, symbol, model, outcome, reason, coid, approved_ in made:
            minute = time_ns // MINUTE_NS
            key = SEP.join((symbol, model))
            out[(minute, SIGNALS, key)].n += 1
            if approved_:
                out[(minute, APPROVED, key)].n += 1
            if outcome != "ORDERED":
                skipped = f"{outcome} {reason}".strip()
                out[(minute, SKIP, SEP.join((symbol, model, skipped)))].n += 1
            if coid:
                decided[coid] = (minute, symbol, model)
    return out, fills, callers


PlainRow = tuple[RowKey, int, int, float, "dict[int, list[Any]] | None"]
"""A roll-up row as plain values: (minute, kind, key), n, errors, sum, histogram buckets."""


def write_rows(db: sqlite3.Connection, plain: Sequence[PlainRow]) -> None:
    """Add rows to the file's (inside the writer's transaction): the rows of the minutes they
    fall in are read in one query and the merged rows written in one statement."""
    if not plain:
        return
    minutes = sorted({minute for (minute, _, _), *_ in plain})
    stored: dict[RowKey, tuple[int, int, float, bytes]] = {}
    for i in range(0, len(minutes), 500):
        part = minutes[i : i + 500]
        stored.update(
            ((minute, kind, key), (n, errors, total, hist))
            for minute, kind, key, n, errors, total, hist in db.execute(
                "SELECT minute, kind, key, n, errors, sum, hist FROM rollups "
                f"WHERE minute IN ({','.join('?' * len(part))})",
                part,
            )
        )
    # A key may come more than once (the answers of several roll-ups), merged in order; the
    # newer row's example trace of a bucket is kept (an older one may have been evicted).
    merged: dict[RowKey, _Row] = {}
    for row_key, n, errors, total, buckets in plain:
        row = _Row(n, errors, total, None if buckets is None else Histogram(buckets))
        before = merged.get(row_key)
        if before is None:
            old = stored.get(row_key)
            if old is not None:
                before = _Row(old[0], old[1], old[2], Histogram.decode(old[3]) if old[3] else None)
        if before is not None:
            row.merge(before)
        merged[row_key] = row
    db.executemany(
        "INSERT OR REPLACE INTO rollups(minute, kind, key, n, errors, sum, hist) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (*k, r.n, r.errors, r.sum, b"" if r.hist is None else r.hist.encode())
            for k, r in merged.items()
        ],
    )


# Reading a window ----------------------------------------------------------------------------


@dataclass
class WindowRollup:
    """What a window's roll-ups (whole minutes) and its spans not rolled up yet say."""

    stages: dict[str, dict[str, Histogram]] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    funnel: analysis.FunnelCounts = field(default_factory=dict)
    rolled_minutes: int = 0
    """Minutes read from roll-ups."""
    spans_read: int = 0
    """Spans read for the part of the window not rolled up yet."""
    spans_limited: bool = False
    """True when that part held more spans than were read (the newest were read)."""


def read_window(db: sqlite3.Connection, first_minute: int, last_minute: int) -> WindowRollup:
    """The roll-ups of the minutes `first_minute` .. `last_minute`, merged."""
    out = WindowRollup(rolled_minutes=max(0, last_minute - first_minute + 1))
    stages: dict[str, dict[str, Histogram]] = defaultdict(dict)
    edges: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    funnel: analysis.FunnelCounts = {}
    for kind, key, n, errors, hist in db.execute(
        "SELECT kind, key, n, errors, hist FROM rollups WHERE minute >= ? AND minute <= ?",
        (first_minute, last_minute),
    ):
        if kind in STAGE_KINDS:
            found = stages[key].get(kind)
            decoded = Histogram.decode(hist)
            if found is None:
                stages[key][kind] = decoded
            else:
                found.merge(decoded)
        elif kind == EDGE:
            caller, callee, edge_kind = key.split(SEP)
            row = edges[(caller, callee, edge_kind)]
            row[0] += n
            row[1] += errors
        else:
            parts = key.split(SEP)
            counts = funnel.setdefault((parts[0], parts[1]), [0, 0, 0, defaultdict(int)])
            if kind == SIGNALS:
                counts[0] += n
            elif kind == APPROVED:
                counts[1] += n
            elif kind == FILLED:
                counts[2] += n
            elif kind == SKIP:
                counts[3][parts[2]] += n
    out.stages = dict(stages)
    out.edges = dict(edges)
    out.funnel = funnel
    return out


def add_spans(window: WindowRollup, spans: Sequence[StoredSpan], since_ns: int) -> None:
    """Add what `spans` say from `since_ns` on (the part of a window not rolled up yet)."""
    window.spans_read += sum(1 for s in spans if s.start_ns >= since_ns)
    for key, row in rows_of(spans, since_ns=since_ns, fills=analysis.filled_orders(spans)).items():
        _, kind, name = key
        if kind in STAGE_KINDS:
            assert row.hist is not None
            found = window.stages.setdefault(name, {}).get(kind)
            if found is None:
                window.stages[name][kind] = row.hist
            else:
                found.merge(row.hist)
        elif kind == EDGE:
            caller, callee, edge_kind = name.split(SEP)
            counts = window.edges.setdefault((caller, callee, edge_kind), [0, 0])
            counts[0] += row.n
            counts[1] += row.errors
        else:
            parts = name.split(SEP)
            f = window.funnel.setdefault((parts[0], parts[1]), [0, 0, 0, defaultdict(int)])
            index = {SIGNALS: 0, APPROVED: 1, FILLED: 2}.get(kind)
            if index is not None:
                f[index] += row.n
            else:
                f[3][parts[2]] += row.n


def breakdown(window: WindowRollup) -> list[analysis.StageBreakdown]:
    """The tick-to-trade table of a window, from its histograms."""

    def q(stage: dict[str, Histogram], kind: str) -> dict[float, analysis.Quantile]:
        found = stage.get(kind)
        return {} if found is None else found.quantiles()

    rows = [
        analysis.StageBreakdown(
            name,
            stage["total"].count if "total" in stage else 0,
            q(stage, "wait"),
            q(stage, "service"),
            q(stage, "sql"),
            q(stage, "total"),
        )
        for name, stage in window.stages.items()
    ]
    return analysis.sort_stages(rows)


def window_of_spans(spans: Sequence[StoredSpan], since_ns: int, limit: int) -> WindowRollup:
    """A window from its spans alone (a store without roll-ups)."""
    window = WindowRollup(spans_limited=len(spans) >= limit)
    add_spans(window, spans, since_ns)
    return window
