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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from . import _analysis as analysis
from ._store import KINDS, StoredSpan

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

    def __init__(
        self,
        settle_s: float,
        spans_of: Callable[[list[Any]], list[RollSpan]],
        interval_s: float = 1.0,
    ) -> None:
        self.settle_s = settle_s
        self.interval_s = interval_s
        self._spans_of = spans_of
        self._last_roll = -math.inf
        # The writer's records (tuples of plain values: the garbage collector leaves them be,
        # where as many spans as objects would make every full collection slow).
        self._pending: OrderedDict[bytes, tuple[float, list[Any]]] = OrderedDict()
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
            found = pending.get(rec[0])
            if found is None:
                pending[rec[0]] = (now, [rec])
            else:
                found[1].append(rec)
            if rec[6] < low:
                low = rec[6]
        self._min_pending = low

    def settle(self, now: float, *, force: bool = False) -> None:
        """Roll up the traces whose first span was written `settle_s` ago (all with `force`),
        at most once every `interval_s`."""
        if not force and now - self._last_roll < self.interval_s:
            return
        self._last_roll = now
        pending = self._pending
        ready: list[Any] = []
        while pending:
            trace_id, (first_seen, records) = next(iter(pending.items()))
            if not force and now - first_seen < self.settle_s:
                break
            del pending[trace_id]
            ready.extend(records)
        if ready:
            self.roll(self._spans_of(ready))
            self._min_pending = min(
                (min(rec[6] for rec in records) for _, records in pending.values()),
                default=NO_WATERMARK,
            )

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


PlainRow = tuple[RowKey, int, int, float, "dict[int, list[Any]] | None"]
"""A roll-up row as plain values: (minute, kind, key), n, errors, sum, histogram buckets."""


def write_rows(db: sqlite3.Connection, plain: Sequence[PlainRow]) -> None:
    """Add rows to the file's (inside the writer's transaction)."""
    for (minute, kind, key), n, errors, total, buckets in plain:
        row = _Row(n, errors, total, None if buckets is None else Histogram(buckets))
        old = db.execute(
            "SELECT n, errors, sum, hist FROM rollups WHERE minute = ? AND kind = ? AND key = ?",
            (minute, kind, key),
        ).fetchone()
        if old is not None:
            row.merge(_Row(old[0], old[1], old[2], Histogram.decode(old[3]) if old[3] else None))
        db.execute(
            "INSERT OR REPLACE INTO rollups(minute, kind, key, n, errors, sum, hist) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                minute,
                kind,
                key,
                row.n,
                row.errors,
                row.sum,
                row.hist.encode() if row.hist is not None else b"",
            ),
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
