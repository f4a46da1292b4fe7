"""Spans on disk: a SQLite span store that survives restarts, with importance-aware retention.

Layout (one SQLite file in WAL mode, `synchronous=NORMAL`):

- `traces`: one row per trace (16-byte id, first start, last end, span and error counts, flags:
  error / noise / important, the root span's service and operation) indexed by start time;
- `spans`: one compact row per span: the trace's integer reference instead of its id, 8-byte
  span and parent ids as BLOBs, service and operation as small integers from the `names`
  dictionary, start (ns), duration (ns), flags (error, kind), the resource as a reference to
  `resources`, attributes as compact JSON with dictionary-coded keys `[key id, value, ...]`,
  events/links/status message (rare) in `extra`. Indexed by trace and by service + start
  (covering duration and operation, so "service X, slower than Y, newest 20" reads the index
  only);
- `keys`: promoted business keys (any attribute named `client_order_id`, `order_id`, `symbol`,
  `model_version` or ending in `.<that>`), one row per value and trace;
- `links`: one row per linked pair of traces, indexed both ways, so an order's traces are found
  in either direction and transitively;
- `stage_hist`: per minute and `service: operation`, a log-bucketed duration histogram (2 %
  wide buckets) of EVERY span received, counted before sampling, so per-stage quantiles over a
  million spans read a few thousand rows and stay unbiased when ticks are sampled down;
- `logs`: OTLP log records, indexed by trace and span id;
- `rollups`: per minute, the window pages' numbers (stage histograms with example traces,
  service-map edges, the decisions funnel) of the spans written, see `_rollup`.

Writes go through a bounded queue to one background writer thread: `ingest` never blocks;
when the queue holds `queue_spans` spans, a batch is refused and counted as dropped. The writer
commits at most once every `commit_interval_s` (default 1 s) unless a batch fills first or
someone flushes: every commit writes each page it touched into the write-ahead log again, and
at 450 orders a second (14 spans and 7 log lines each) committing each request as it came wrote
69 KB per order for 7 KB of rows, against 20 KB with one commit a second. The writer
holds each new trace in memory for `hold_s` seconds (at most `max_held_spans` spans: beyond,
the oldest traces are decided early and counted) before it decides: a trace that shows an
order, a fill, a risk denial, a stop, a kill switch or an error (`_importance`) is written
with the next commit and always kept; a plain trace (a tick that led to no order) is kept
with probability `tick_sample_rate` and noise (health checks, metrics scrapes, idle polling) with
`noise_sample_rate`, marked as noise so searches leave it out by default. The decision is by
trace id, so every span of a sampled trace is kept together. A span that arrives after its
trace was sampled out is dropped too (and counted), unless it makes the trace important: then it
is written with the spans dropped before, kept at hand for the newest `rescue_spans`
sampled-out spans, so a kept trade trace is whole (counted as rescued).

Retention runs in the writer every `retention_interval_s`: traces older than `max_age_s` go,
then, while the live pages exceed `max_bytes`, the oldest traces go (plain and noise ones before
important ones). Every removed span is counted in `StoreStats.evicted_spans`. The counters are
kept in the file, so they survive a restart too.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import _rollup
from ._decode import (
    BUCKET_BASE,
    Decoder,
    Record,
    dumpb,
    extra_of,
    received_of,
    record_of_parts,
)
from ._importance import Importance, trace_level
from ._queries import (
    BUSINESS_KEYS,
    LogRecord,
    SearchQuery,
    StageQuantiles,
    StoreStats,
    TraceSummary,
)
from ._rollproc import LocalRollup, RollupDied, RollupProcess
from ._store import KINDS, StoredSpan
from .otlp import LogRow, log_attributes, log_rows

__all__ = ["MalformedPayload", "SqliteSpanStore"]

log = logging.getLogger(__name__)

_KIND_CODES = {name: code for code, name in KINDS.items()}
_SERVICE, _OPERATION, _SHAPE = 0, 1, 2
"""Kinds of `names` entries: services, operations, attribute key sets (JSON lists)."""
_SPAN_ERROR = 1
_TRACE_ERROR, _TRACE_NOISE, _TRACE_IMPORTANT = 1, 2, 4
_TRACE_LEVEL_FLAGS = {
    Importance.PLAIN: 0,
    Importance.NOISE: _TRACE_NOISE,
    Importance.IMPORTANT: _TRACE_IMPORTANT,
}
_BUCKET_BASE = BUCKET_BASE
_MINUTE_NS = 60_000_000_000
_TRACE_SLACK_NS = _MINUTE_NS
"""How long before a window a trace may start and still have spans in it, for window reads."""
_IMPORTANT = int(Importance.IMPORTANT)
_COUNTERS = (
    "received_spans",
    "dropped_spans",
    "evicted_spans",
    "sampled_out_spans",
    "rescued_spans",
    "early_decided_traces",
    "rollup_restarts",
)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS names(
    id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL, UNIQUE(kind, name));
CREATE TABLE IF NOT EXISTS resources(id INTEGER PRIMARY KEY, attrs TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS traces(
    id INTEGER PRIMARY KEY, tid BLOB NOT NULL UNIQUE, start INTEGER NOT NULL,
    end INTEGER NOT NULL, spans INTEGER NOT NULL, errors INTEGER NOT NULL,
    flags INTEGER NOT NULL, root_svc INTEGER, root_op INTEGER);
CREATE INDEX IF NOT EXISTS traces_start ON traces(start);
CREATE TABLE IF NOT EXISTS spans(
    trace INTEGER NOT NULL, sid BLOB NOT NULL, parent BLOB,
    svc INTEGER NOT NULL, op INTEGER NOT NULL, start INTEGER NOT NULL, dur INTEGER NOT NULL,
    flags INTEGER NOT NULL, res INTEGER, attrs BLOB, extra BLOB,
    PRIMARY KEY(trace, sid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spans_svc ON spans(svc, start, dur, op);
CREATE TABLE IF NOT EXISTS keys(
    value TEXT NOT NULL, trace INTEGER NOT NULL, PRIMARY KEY(value, trace)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_trace ON keys(trace);
CREATE TABLE IF NOT EXISTS links(a INTEGER NOT NULL, b BLOB NOT NULL, PRIMARY KEY(a, b))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_b ON links(b, a);
CREATE TABLE IF NOT EXISTS stage_hist(
    minute INTEGER NOT NULL, svc INTEGER NOT NULL, op INTEGER NOT NULL, bucket INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY(minute, svc, op, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs(
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, trace BLOB, span BLOB, severity TEXT,
    body TEXT, svc INTEGER, attrs TEXT);
CREATE INDEX IF NOT EXISTS logs_span ON logs(trace, span) WHERE trace IS NOT NULL;
CREATE INDEX IF NOT EXISTS logs_time ON logs(time);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
    + _rollup.SCHEMA
)

_SPAN_COLUMNS = (
    "s.trace, s.sid, s.parent, s.svc, s.op, s.start, s.dur, s.flags, s.res, s.attrs, s.extra"
)


_Rec = Record


class MalformedPayload(ValueError):
    """An OTLP request body that does not decode; the message says why."""


@dataclass
class _Held:
    first_seen: float
    spans: list[_Rec] = field(default_factory=list)


def _record(span: StoredSpan) -> _Rec:
    links = span.links
    return record_of_parts(
        trace_id=bytes.fromhex(span.trace_id),
        span_id=bytes.fromhex(span.span_id),
        parent=bytes.fromhex(span.parent_span_id) if span.parent_span_id else None,
        service=span.service,
        name=span.name,
        kind=_KIND_CODES.get(span.kind, 0),
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        error=span.error,
        attributes=span.attributes,
        extra=extra_of(
            [(n, a, t) for (n, a), t in zip(span.events, span.event_times_ns, strict=True)]
            if span.event_times_ns
            else span.events,
            links,
            span.status_message,
        ),
        linked=tuple({bytes.fromhex(t) for t, _ in links}),
        resource=span.resource,
    )


def _parse(payload: bytes) -> tuple[Any, int]:
    """Parse an `ExportTraceServiceRequest` (protobuf's C code, fast) and check its ids; the
    request and its number of spans. The Python-level work is the decoder's (`_decode`)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(payload)
    count = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                if len(s.trace_id) != 16 or len(s.span_id) != 8:
                    raise ValueError(
                        f"span {s.name!r} has a {len(s.trace_id)}-byte trace id and a "
                        f"{len(s.span_id)}-byte span id; OTLP wants 16 and 8"
                    )
            count += len(ss.spans)
    return request, count


def _bucket_ms(bucket: int) -> float:
    """The middle of a bucket, in milliseconds."""
    return math.exp((bucket + 0.5) * _BUCKET_BASE) / 1e6


def _dumps(value: object) -> str:
    return dumpb(value).decode()


def _log_attributes(stored: str | bytes | None) -> dict[str, Any]:
    if not stored:
        return {}
    if isinstance(stored, bytes):
        try:
            return log_attributes(stored)
        except Exception:  # a damaged row shows without its attributes, not as an error page
            log.warning("a stored log record's attributes could not be read", exc_info=True)
            return {}
    loaded: dict[str, Any] = orjson.loads(stored)
    return loaded


def _sampled(trace_id: bytes, rate: float) -> bool:
    """Keep a trace with probability `rate`, the same answer for every span of it."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    # Multiplicative hashing spreads ids that are not random (sequential ones, say).
    low = int.from_bytes(trace_id[-4:], "big")
    return (low * 2654435761) % 0x1_0000_0000 < rate * 0x1_0000_0000


class SqliteSpanStore:
    """The span store of the embedded collector (see the module docstring).

    `path` is the SQLite file (created with its directory). Reads may come from any thread;
    writes happen on the writer thread only. Call `close()` to write what is held and stop.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age_s: float = 7 * 86400,
        max_bytes: int = 1 << 30,
        tick_sample_rate: float = 0.1,
        noise_sample_rate: float = 0.01,
        hold_s: float = 6.0,
        max_held_spans: int = 100_000,
        rescue_spans: int = 50_000,
        queue_spans: int = 200_000,
        batch_spans: int = 16_384,
        retention_interval_s: float = 5.0,
        commit_interval_s: float = 1.0,
        decode_processes: int = 0,
        rollup_processes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("max_age_s", max_age_s),
            ("max_bytes", max_bytes),
            ("queue_spans", queue_spans),
            ("batch_spans", batch_spans),
            ("max_held_spans", max_held_spans),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, rate in (
            ("tick_sample_rate", tick_sample_rate),
            ("noise_sample_rate", noise_sample_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if not 0.0 <= commit_interval_s <= 60.0:
            raise ValueError(f"commit_interval_s must be between 0 and 60, got {commit_interval_s}")
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.tick_sample_rate = tick_sample_rate
        self.noise_sample_rate = noise_sample_rate
        self.hold_s = hold_s
        self.max_held_spans = max_held_spans
        self.rescue_spans = rescue_spans
        self.queue_spans = queue_spans
        self.batch_spans = batch_spans
        self.retention_interval_s = retention_interval_s
        self.commit_interval_s = commit_interval_s
        self._last_commit = 0.0
        self._clock = clock

        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        for key, value in self._db.execute("SELECT key, value FROM meta"):
            if key in self._counters:
                self._counters[key] = value
        self._db.commit()
        self._load_state()
        self._resources_by_id: dict[int, dict[str, Any]] = {}

        self._queue: queue.SimpleQueue[tuple[str, Any, int]] = queue.SimpleQueue()
        self._queued = 0
        self._queue_lock = threading.Lock()
        self._held: OrderedDict[bytes, _Held] = OrderedDict()
        self._held_spans = 0
        self._kept: OrderedDict[bytes, Importance] = OrderedDict()
        # Sampled-out traces, with their spans while the rescue budget lasts (oldest first).
        self._dropped: OrderedDict[bytes, list[_Rec] | None] = OrderedDict()
        self._dropped_saved: OrderedDict[bytes, int] = OrderedDict()
        self._saved_spans = 0
        self._saved_order: deque[bytes] = deque()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._last_retention = 0.0
        self._closed = False
        self.writer_error: BaseException | None = None
        self._decoder = Decoder(decode_processes)
        self.rollup_processes = rollup_processes
        self.rollup_watermark_ns = _rollup.NO_WATERMARK
        """Spans starting before this are in the roll-ups (see `_rollup`)."""
        self._reroll()
        self._roller = self._start_roller()
        self._writer = threading.Thread(target=self._run, name="span-store-writer", daemon=True)
        self._writer.start()

    def _load_state(self) -> None:
        """What the writer keeps in memory, read from the file (at start, and after a batch
        failed and was rolled back: its new names and traces are not in the file)."""
        db = self._db
        self._span_count = db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        self._trace_count = db.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
        self._names: dict[tuple[int, str], int] = {}
        self._names_by_id: dict[int, str] = {}
        self._service_ids: dict[str, int] = {}
        self._operation_ids: dict[str, int] = {}
        self._shape_text_ids: dict[str, int] = {}
        self._shapes_by_id: dict[int, tuple[str, ...]] = {}
        for id_, kind, name in db.execute("SELECT id, kind, name FROM names"):
            self._names[(kind, name)] = id_
            self._names_by_id[id_] = name
            if kind == _SERVICE:
                self._service_ids[name] = id_
            elif kind == _OPERATION:
                self._operation_ids[name] = id_
            elif kind == _SHAPE:
                self._shape_text_ids[name] = id_
                self._shapes_by_id[id_] = tuple(orjson.loads(name))
        self._resource_ids: dict[str, int] = {}
        self._refs: dict[bytes, int] = {}
        # While the cache holds every trace in the file (a new file, until it is trimmed), a
        # trace id it does not know is a new trace: no look-up in the file.
        self._refs_complete = self._trace_count == 0
        self._next_ref = 1 + (db.execute("SELECT max(id) FROM traces").fetchone()[0] or 0)

    def _reroll(self) -> None:
        """After a restart: roll up again what was written but not rolled up before it."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rollup_watermark'").fetchone()
        if row is None or row[0] >= _rollup.NO_WATERMARK:
            return
        first = row[0] // _MINUTE_NS * _MINUTE_NS
        spans = self.spans_between(first - _TRACE_SLACK_NS, 1 << 62, 1_000_000)
        rollup = _rollup.Rollup(self._settle_s)
        rollup.roll(spans, since_ns=first)
        db = self._db
        db.execute("BEGIN")
        db.execute("DELETE FROM rollups WHERE minute >= ?", (first // _MINUTE_NS,))
        rollup.write(db)
        db.execute("DELETE FROM meta WHERE key = 'rollup_watermark'")
        db.execute("COMMIT")
        self.rollup_watermark_ns = _rollup.NO_WATERMARK

    @property
    def _settle_s(self) -> float:
        return max(self.hold_s, 1.0)

    def _start_roller(self, *, local: bool = False) -> RollupProcess | LocalRollup:
        """The roll-ups in a child process (`rollup_processes`), else in the writer's thread."""
        if self.rollup_processes > 0 and not local:
            try:
                return RollupProcess(self._settle_s)
            except Exception:  # rolling up in the writer beats not rolling up
                log.exception("cannot start the roll-up process; rolling up in the writer")
        return LocalRollup(self._settle_s)

    def _roll(
        self, out: list[_Rec], now: float, *, force: bool
    ) -> tuple[list[_rollup.PlainRow], int]:
        """Hand the records written to the roll-ups; the rows to write and the watermark.

        A roll-up process that died lost what it held: the spans in the file since the stored
        watermark are rolled up again (`_reroll`) and another process takes over (counted in
        `rollup_restarts`; after three in a row, the writer rolls up itself)."""
        for attempt in range(4):
            roller = self._roller
            try:
                roller.submit(out, now, force=force)
                return roller.collect(wait=force)
            except RollupDied:
                log.warning("roll-up process %s died; rolling up again from the file", roller.pid)
                self._counters["rollup_restarts"] += 1
                roller.close()
                self._reroll()
                self._roller = self._start_roller(local=attempt >= 2)
        raise AssertionError("unreachable: the last attempt rolls up in the writer")

    # Connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA cache_size=-32000")
        # Fold the log into the file every 10,000 pages (40 MB) rather than 1,000: a page
        # changed again before the fold is copied once. 14 % fewer bytes written and about a
        # tenth less of the writer thread's CPU under `bench.order_path`'s load (docs/COLLECTOR.md);
        # the log file is cut back to 64 MB after a fold.
        db.execute("PRAGMA wal_autocheckpoint=10000")
        db.execute(f"PRAGMA journal_size_limit={64 << 20}")
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            db.execute("PRAGMA query_only=1")
            self._local.db = db
            with self._queue_lock:
                self._readers.append(db)
        return db

    # Ingest (any thread, never blocks) -----------------------------------------------------

    def ingest(self, spans: Sequence[StoredSpan]) -> int:
        """Queue spans for writing; the number refused (all of them when the queue is full)."""
        return self._offer("spans", [_record(s) for s in spans], len(spans))

    def ingest_logs(self, records: Sequence[LogRecord]) -> int:
        """Queue log records for writing; the number refused."""
        rows: list[LogRow] = [
            (
                r.time_ns,
                bytes.fromhex(r.trace_id) if r.trace_id else None,
                bytes.fromhex(r.span_id) if r.span_id else None,
                r.severity,
                r.body,
                r.service,
                _dumps(r.attributes) if r.attributes else None,
            )
            for r in records
        ]
        return self._offer("logs", rows, len(rows))

    def ingest_otlp(self, payload: bytes) -> tuple[int, int]:
        """Decode an `ExportTraceServiceRequest` and queue its spans: (accepted, refused)."""
        try:
            request, count = _parse(payload)
        except Exception as exc:  # protobuf raises DecodeError, a bad id ValueError
            raise MalformedPayload(f"not an OTLP ExportTraceServiceRequest: {exc}") from exc
        if not self._fits(count):
            return 0, count
        refused = self._offer("otlp", (self._decoder.submit(payload, request), payload), count)
        return count - refused, refused

    def ingest_otlp_logs(self, payload: bytes) -> tuple[int, int]:
        """Read an `ExportLogsServiceRequest` and queue its records: (accepted, refused)."""
        try:
            rows = log_rows(payload, _dumps)
        except Exception as exc:  # see ingest_otlp
            raise MalformedPayload(f"not an OTLP ExportLogsServiceRequest: {exc}") from exc
        refused = self._offer("logs", rows, len(rows))
        return len(rows) - refused, refused

    def add_otlp(self, payload: bytes) -> int:
        """`TraceStore`'s ingest call: the spans accepted."""
        return self.ingest_otlp(payload)[0]

    def ingest_routes(self) -> list[Any]:
        """The OTLP/HTTP routes into this store (`POST /v1/traces`, `POST /v1/logs`)."""
        from ._collector import ingest_routes

        return ingest_routes(self)

    @property
    def queue_depth(self) -> int:
        """Spans and log records queued, not yet taken by the writer."""
        return self._queued

    @property
    def received_spans(self) -> int:
        return self._counters["received_spans"]

    def _fits(self, count: int) -> bool:
        """Whether `count` more spans fit in the queue now (counted as dropped if not)."""
        with self._queue_lock:
            if self._closed or self._queued + count > self.queue_spans:
                self._counters["dropped_spans"] += count
                return False
        return True

    def _offer(self, kind: str, items: Any, count: int) -> int:
        if not count:
            return 0
        with self._queue_lock:
            if self._closed or self._queued + count > self.queue_spans:
                if kind != "logs":
                    self._counters["dropped_spans"] += count
                return count
            self._queued += count
            if kind != "logs":
                self._counters["received_spans"] += count
        self._queue.put((kind, items, count))
        return 0

    def flush(self, timeout: float = 10.0, *, decide: bool = True) -> None:
        """Wait until everything queued so far is written; held traces are decided at once
        (`decide=False`: only those whose hold has ended)."""
        done = threading.Event()
        self._queue.put(("flush" if decide else "sync", done, 0))
        if not done.wait(timeout):
            raise TimeoutError(f"the span store did not flush within {timeout} s")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and held, stop the writer, close the file."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(("stop", None, 0))
        self._writer.join(timeout)
        self._decoder.close()
        self._roller.close()
        with self._queue_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()

    def __enter__(self) -> SqliteSpanStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported through stats; the thread must not die quietly
            self.writer_error = exc
            raise
        finally:
            try:
                # Fold the write-ahead log into the file, so a stopped store is one file.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    def _loop(self) -> None:
        while True:
            try:
                item: tuple[str, Any, int] | None = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            spans: list[_Rec] = []
            received: Counter[tuple[int, str, str, int]] = Counter()
            logs: list[LogRow] = []
            signals: list[tuple[str, Any, int]] = []
            taken = 0
            while item is not None:
                kind, payload, count = item
                taken += count
                try:
                    if kind == "spans":
                        spans.extend(payload)
                        received.update(received_of(payload))
                    elif kind == "otlp":
                        records = self._decoder.result(*payload)
                        spans.extend(records)
                        received.update(records.received)
                    elif kind == "logs":
                        logs.extend(payload)
                except Exception:  # one bad request must not stop the writer
                    log.exception("the span store could not read %d queued items", count)
                    self._counters["dropped_spans"] += count if kind != "logs" else 0
                if kind in ("flush", "sync", "stop"):
                    signals.append(item)
                    break
                if len(spans) + len(logs) >= self.batch_spans:
                    break
                # Gather until the batch is full, a signal comes or `commit_interval_s` has
                # passed since the last commit: every commit writes each page it touched into
                # the write-ahead log again, so commits of a few requests each cost several
                # times the bytes (and the CPU) of the rows.
                wait = self._last_commit + self.commit_interval_s - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    item = None
            force = any(kind != "sync" for kind, _, _ in signals)
            try:
                self._write(spans, logs, force=force, received=received)
                self._last_commit = time.monotonic()
            except Exception:  # a failed batch is lost and counted; the writer carries on
                log.exception("the span store could not write a batch of %d spans", len(spans))
                self._counters["dropped_spans"] += len(spans)
            with self._queue_lock:
                self._queued -= taken
            now = time.monotonic()
            if force or now - self._last_retention >= self.retention_interval_s:
                self._last_retention = now
                try:
                    self._retain()
                except Exception:  # retried at the next interval
                    log.exception("the span store's retention failed")
            for kind, payload, _ in signals:
                if kind in ("flush", "sync"):
                    payload.set()
                elif kind == "stop":
                    return

    def _write(
        self,
        spans: list[_Rec],
        logs: list[LogRow],
        *,
        force: bool,
        received: dict[tuple[int, str, str, int], int] | None = None,
    ) -> None:
        """Write a batch; `received` counts its spans per stage histogram bucket (computed
        here when not given)."""
        now = self._clock()
        out: list[_Rec] = []
        route = self._route
        kept = self._kept.get
        keep = out.append
        important = _IMPORTANT
        for rec in spans:
            # A span of a trace already kept is written as it comes (the usual case once a
            # trace is decided); what else can happen to it is `_route`'s.
            level = kept(rec[0])
            if level is not None and (level is Importance.IMPORTANT or rec[15] != important):
                keep(rec)
            else:
                route(rec, now, out)
        if received is None:
            received = received_of(spans)
        hist = {
            (minute, self._service_id(service), self._operation_id(name), bucket): n
            for (minute, service, name, bucket), n in received.items()
        }
        self._decide(now, out, force=force)
        rows, watermark = self._roll(out, now, force=force)
        if not out and not logs and not hist and not rows and watermark == self.rollup_watermark_ns:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if out:
                self._write_spans(out)
            _rollup.write_rows(db, rows)
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('rollup_watermark', ?) "
                "ON CONFLICT DO UPDATE SET value = excluded.value",
                (watermark,),
            )
            if hist:
                db.executemany(
                    "INSERT INTO stage_hist(minute, svc, op, bucket, n) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET n = n + excluded.n",
                    [(*key, n) for key, n in hist.items()],
                )
            if logs:
                self._write_logs(logs)
            self._save_counters()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load_state()
            raise
        self.rollup_watermark_ns = watermark

    def _route(self, rec: _Rec, now: float, out: list[_Rec]) -> None:
        """Write the span, hold it until its trace is decided, or drop it (sampled out).

        The trace's level is in `_kept` by the time its spans are written."""
        tid = rec[0]
        level = self._kept.get(tid)
        if level is not None:
            if rec[15] == _IMPORTANT:
                level = self._kept[tid] = Importance.IMPORTANT
            out.append(rec)
            return
        if tid in self._dropped:
            saved = self._dropped[tid]
            if rec[15] == _IMPORTANT:
                # A late span made a sampled-out trace important: write it with the spans
                # dropped before, while they are still at hand.
                del self._dropped[tid]
                self._remember(self._kept, tid, Importance.IMPORTANT)
                if saved:
                    self._saved_spans -= len(saved)
                    self._counters["sampled_out_spans"] -= len(saved)
                    self._counters["rescued_spans"] += len(saved)
                    out.extend(saved)
                out.append(rec)
            else:
                self._counters["sampled_out_spans"] += 1
                if saved is not None:
                    saved.append(rec)
                    self._saved_spans += 1
                    self._trim_saved()
            return
        held = self._held.get(tid)
        if held is None:
            held = self._held[tid] = _Held(now)
        held.spans.append(rec)
        self._held_spans += 1
        if rec[15] == _IMPORTANT:
            del self._held[tid]
            self._held_spans -= len(held.spans)
            self._remember(self._kept, tid, Importance.IMPORTANT)
            out.extend(held.spans)

    def _decide(self, now: float, out: list[_Rec], *, force: bool) -> None:
        """Decide the traces whose hold has ended (all of them with `force`), and the oldest
        ones beyond `max_held_spans` (counted: they may miss spans still on their way)."""
        while self._held:
            tid, held = next(iter(self._held.items()))
            if not force and now - held.first_seen < self.hold_s:
                if self._held_spans <= self.max_held_spans:
                    break
                self._counters["early_decided_traces"] += 1
            del self._held[tid]
            self._held_spans -= len(held.spans)
            level = trace_level((r[15], r[5]) for r in held.spans)
            rate = {
                Importance.IMPORTANT: 1.0,
                Importance.NOISE: self.noise_sample_rate,
                Importance.PLAIN: self.tick_sample_rate,
            }[level]
            if _sampled(tid, rate):
                self._remember(self._kept, tid, level)
                out.extend(held.spans)
            else:
                self._counters["sampled_out_spans"] += len(held.spans)
                saved: list[_Rec] | None = None
                if self.rescue_spans > 0:
                    saved = held.spans
                    self._saved_spans += len(saved)
                    self._saved_order.append(tid)
                forgotten = self._remember(self._dropped, tid, saved)
                if forgotten:
                    self._saved_spans -= len(forgotten)
                self._trim_saved()

    def _trim_saved(self) -> None:
        """Keep at most `rescue_spans` sampled-out spans at hand, the newest traces' ones."""
        order = self._saved_order
        while self._saved_spans > self.rescue_spans and order:
            tid = order.popleft()
            saved = self._dropped.get(tid)
            if saved:
                self._saved_spans -= len(saved)
                self._dropped[tid] = None

    @staticmethod
    def _remember(lru: OrderedDict[bytes, Any], key: bytes, value: Any) -> Any:
        """Remember `key` (the newest); the value forgotten to stay bounded, if any."""
        lru[key] = value
        lru.move_to_end(key)
        if len(lru) > 200_000:
            return lru.popitem(last=False)[1]
        return None

    def _name_id(self, kind: int, name: str) -> int:
        key = (kind, name)
        found = self._names.get(key)
        if found is None:
            db = self._db
            db.execute("INSERT OR IGNORE INTO names(kind, name) VALUES (?, ?)", key)
            found = db.execute("SELECT id FROM names WHERE kind = ? AND name = ?", key).fetchone()[
                0
            ]
            self._names[key] = found
            self._names_by_id[found] = name
            if kind == _SERVICE:
                self._service_ids[name] = found
            elif kind == _OPERATION:
                self._operation_ids[name] = found
        return found

    def _service_id(self, name: str) -> int:
        found = self._service_ids.get(name)
        return self._name_id(_SERVICE, name) if found is None else found

    def _operation_id(self, name: str) -> int:
        found = self._operation_ids.get(name)
        return self._name_id(_OPERATION, name) if found is None else found

    def _shape_id(self, text: str) -> int:
        """The attribute keys of a span, in order, as one dictionary entry (a JSON list)."""
        found = self._shape_text_ids.get(text)
        if found is None:
            found = self._name_id(_SHAPE, text)
            self._shape_text_ids[text] = found
        return found

    def _resource_id(self, text: str) -> int:
        """The resource's attributes (a JSON object) as one `resources` row."""
        found = self._resource_ids.get(text)
        if found is None:
            db = self._db
            db.execute("INSERT OR IGNORE INTO resources(attrs) VALUES (?)", (text,))
            found = db.execute("SELECT id FROM resources WHERE attrs = ?", (text,)).fetchone()[0]
            self._resource_ids[text] = found
        return found

    def _trace_refs(self, tids: Iterable[bytes]) -> dict[bytes, int]:
        """The integer reference of each trace id already stored (from a cache, else the file)."""
        refs = self._refs
        if not self._refs_complete:
            unknown = [t for t in tids if t not in refs]
            for i in range(0, len(unknown), 500):
                part = unknown[i : i + 500]
                marks = ",".join("?" * len(part))
                refs.update(
                    self._db.execute(f"SELECT tid, id FROM traces WHERE tid IN ({marks})", part)
                )
        if len(refs) > 400_000:
            for key in list(refs)[:200_000]:
                del refs[key]
            self._refs_complete = False
        return refs

    def _write_spans(self, spans: list[_Rec]) -> None:
        db = self._db
        by_trace: dict[bytes, list[_Rec]] = {}
        for rec in spans:
            group = by_trace.get(rec[0])
            if group is None:
                by_trace[rec[0]] = [rec]
            else:
                group.append(rec)
        refs = self._trace_refs(by_trace)
        new_traces = []
        updates = []
        rows: list[tuple[Any, ...]] = []
        keys: list[tuple[str, int]] = []
        links: list[tuple[int, bytes]] = []
        resources: dict[str, int] = self._resource_ids
        resource_id = self._resource_id
        service_id = self._service_id
        operation_id = self._operation_id
        shape_ids = self._shape_text_ids
        shape_id = self._shape_id
        kept = self._kept
        service_ids = self._service_ids
        operation_ids = self._operation_ids
        append = rows.append
        for tid, recs in by_trace.items():
            ref = refs.get(tid)
            if ref is None:
                ref = refs[tid] = self._next_ref
                self._next_ref += 1
                self._trace_count += 1
                new = True
            else:
                new = False
            start = end = recs[0][6]
            errors = 0
            root = None
            trace_keys: set[str] = set()
            for rec in recs:
                (
                    _,
                    sid,
                    parent,
                    service,
                    name,
                    kind,
                    t0,
                    t1,
                    error,
                    shape_text,
                    values,
                    business,
                    extra,
                    linked,
                    resource,
                    _,
                    _,
                ) = rec
                if t0 < start:
                    start = t0
                if t1 > end:
                    end = t1
                if error:
                    errors += 1
                if parent is None:
                    root = rec
                if shape_text is not None:
                    shape = shape_ids.get(shape_text)
                    if shape is None:
                        shape = shape_id(shape_text)
                    # `[shape id, value, ...]`: the values arrive as a JSON list already.
                    encoded = b"[%d,%s" % (shape, values[1:]) if len(values) > 2 else None
                    if business:
                        trace_keys.update(business)
                else:
                    encoded = None
                for other in linked:
                    if other != tid:
                        links.append((ref, other))
                res = resources.get(resource)
                if res is None:
                    res = resource_id(resource)
                svc = service_ids.get(service)
                if svc is None:
                    svc = service_id(service)
                op = operation_ids.get(name)
                if op is None:
                    op = operation_id(name)
                append(
                    (
                        ref,
                        sid,
                        parent,
                        svc,
                        op,
                        t0,
                        t1 - t0,
                        (_SPAN_ERROR if error else 0) | (kind << 3),
                        res,
                        encoded,
                        extra,
                    )
                )
            keys.extend((value, ref) for value in trace_keys)
            level = kept.get(tid, Importance.IMPORTANT)
            flags = (_TRACE_ERROR if errors else 0) | _TRACE_LEVEL_FLAGS[level]
            root_svc = service_id(root[3]) if root else None
            root_op = operation_id(root[4]) if root else None
            if new:
                new_traces.append(
                    (ref, tid, start, end, len(recs), errors, flags, root_svc, root_op)
                )
            else:
                updates.append(
                    (start, end, len(recs), errors, flags, flags, flags, root_svc, root_op, ref)
                )
        if new_traces:
            db.executemany(
                "INSERT INTO traces(id, tid, start, end, spans, errors, flags, root_svc, root_op) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_traces,
            )
        if updates:
            db.executemany(
                "UPDATE traces SET start = min(start, ?), end = max(end, ?), "
                "spans = spans + ?, errors = errors + ?, "
                "flags = CASE WHEN ? & 4 THEN (flags | ?) & ~2 ELSE flags | ? END, "
                "root_svc = coalesce(?, root_svc), root_op = coalesce(?, root_op) WHERE id = ?",
                updates,
            )
        before = db.total_changes
        # A span sent twice (an exporter's retry after a timeout) is stored once.
        db.executemany(
            "INSERT OR IGNORE INTO spans(trace, sid, parent, svc, op, start, dur, flags, res, "
            "attrs, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._span_count += db.total_changes - before
        if keys:
            db.executemany("INSERT OR IGNORE INTO keys(value, trace) VALUES (?, ?)", keys)
        if links:
            db.executemany("INSERT OR IGNORE INTO links(a, b) VALUES (?, ?)", links)

    def _write_logs(self, records: list[LogRow]) -> None:
        name_id = self._name_id
        self._db.executemany(
            "INSERT INTO logs(time, trace, span, severity, body, svc, attrs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (t, trace, span, severity, body, name_id(_SERVICE, service), attrs)
                for t, trace, span, severity, body, service, attrs in records
            ],
        )

    def _save_counters(self) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT DO UPDATE SET value = excluded.value",
            list(self._counters.items()),
        )

    # Retention (writer thread) -------------------------------------------------------------

    def _retain(self) -> None:
        db = self._db
        cutoff = int((self._clock() - self.max_age_s) * 1e9)
        while True:
            refs = [
                r
                for (r,) in db.execute(
                    "SELECT id FROM traces WHERE start < ? LIMIT 2000", (cutoff,)
                )
            ]
            if not refs:
                break
            self._evict(refs)
        db.execute("BEGIN")
        db.execute("DELETE FROM logs WHERE time < ?", (cutoff,))
        db.execute("DELETE FROM stage_hist WHERE minute < ?", (cutoff // _MINUTE_NS,))
        db.execute("DELETE FROM rollups WHERE minute < ?", (cutoff // _MINUTE_NS,))
        db.execute("COMMIT")
        for _ in range(1000):
            used = self._used_bytes()
            if used <= self.max_bytes or not self._span_count:
                break
            per_span = max(used / max(self._span_count, 1), 50.0)
            target = int((used - 0.9 * self.max_bytes) / per_span) + 1
            refs = []
            for where in ("flags & 4 = 0", "1"):
                total = 0
                for ref, n in db.execute(
                    f"SELECT id, spans FROM traces WHERE {where} ORDER BY id LIMIT ?",
                    (min(target, 20_000),),
                ):
                    refs.append(ref)
                    total += n
                    if total >= target:
                        break
                if refs:
                    break
            if not refs:
                break
            self._evict(refs)
            oldest = db.execute("SELECT min(start) FROM traces").fetchone()[0]
            if oldest is not None:
                db.execute("DELETE FROM logs WHERE time < ?", (oldest,))

    def _evict(self, refs: list[int]) -> None:
        db = self._db
        marks = ",".join("?" * len(refs))
        tids = [t for (t,) in db.execute(f"SELECT tid FROM traces WHERE id IN ({marks})", refs)]
        db.execute("BEGIN")
        try:
            removed = db.execute(f"DELETE FROM spans WHERE trace IN ({marks})", refs).rowcount
            db.execute(f"DELETE FROM keys WHERE trace IN ({marks})", refs)
            db.execute(f"DELETE FROM links WHERE a IN ({marks})", refs)
            gone = db.execute(f"DELETE FROM traces WHERE id IN ({marks})", refs).rowcount
            self._span_count -= removed
            self._trace_count -= gone
            self._counters["evicted_spans"] += removed
            self._save_counters()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._refs.clear()
            self._refs_complete = False
            raise
        cached = self._refs
        for tid in tids:
            cached.pop(tid, None)

    def _used_bytes(self) -> int:
        db = self._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    # Reads (any thread) --------------------------------------------------------------------

    def _name(self, id_: int | None) -> str:
        if id_ is None:
            return ""
        found = self._names_by_id.get(id_)
        if found is None:
            row = self._reader().execute("SELECT name FROM names WHERE id = ?", (id_,)).fetchone()
            found = row[0] if row else f"#{id_}"
            self._names_by_id[id_] = found
        return found

    def _resource(self, id_: int | None) -> dict[str, Any]:
        if id_ is None:
            return {}
        found = self._resources_by_id.get(id_)
        if found is None:
            row = (
                self._reader()
                .execute("SELECT attrs FROM resources WHERE id = ?", (id_,))
                .fetchone()
            )
            found = orjson.loads(row[0]) if row else {}
            self._resources_by_id[id_] = found
        return found

    def _shape(self, id_: int) -> tuple[str, ...]:
        found = self._shapes_by_id.get(id_)
        if found is None:
            found = tuple(orjson.loads(self._name(id_) or "[]"))
            self._shapes_by_id[id_] = found
        return found

    def _attributes(self, attrs: bytes | None) -> dict[str, Any]:
        if not attrs:
            return {}
        values = orjson.loads(attrs)
        return dict(zip(self._shape(values[0]), values[1:], strict=True))

    def _span(self, tid: bytes, row: tuple[Any, ...]) -> StoredSpan:
        _, sid, parent, svc, op, start, dur, flags, res, attrs, extra = row
        more = orjson.loads(extra) if extra else {}
        events = more.get("e", ())
        return StoredSpan(
            trace_id=tid.hex(),
            span_id=sid.hex(),
            parent_span_id=parent.hex() if parent else "",
            name=self._name(op),
            kind=KINDS.get(flags >> 3, "unspecified"),
            service=self._name(svc),
            start_ns=start,
            end_ns=start + dur,
            attributes=self._attributes(attrs),
            error=bool(flags & _SPAN_ERROR),
            links=[(t, s) for t, s in more.get("l", ())],
            events=[(e[0], e[1]) for e in events],
            event_times_ns=[e[2] for e in events if len(e) > 2],
            status_message=more.get("m", ""),
            resource=self._resource(res),
        )

    @staticmethod
    def _tid(trace_id: str) -> bytes | None:
        try:
            tid = bytes.fromhex(trace_id.strip())
        except ValueError:
            return None
        return tid if len(tid) == 16 else None

    def trace(self, trace_id: str) -> list[StoredSpan]:
        tid = self._tid(trace_id)
        if tid is None:
            return []
        rows = self._reader().execute(
            f"SELECT {_SPAN_COLUMNS} FROM spans s WHERE s.trace = "
            "(SELECT id FROM traces WHERE tid = ?) ORDER BY s.start",
            (tid,),
        )
        return [self._span(tid, row) for row in rows]

    def _trace_ref(self, tid: bytes) -> int | None:
        row = self._reader().execute("SELECT id FROM traces WHERE tid = ?", (tid,)).fetchone()
        return None if row is None else int(row[0])

    def linked_traces(self, trace_id: str) -> list[str]:
        tid = self._tid(trace_id)
        if tid is None:
            return []
        ref = self._trace_ref(tid)
        return sorted(t.hex() for t in self._neighbours(ref, tid) if t != tid)

    def _neighbours(self, ref: int | None, tid: bytes) -> set[bytes]:
        db = self._reader()
        found: set[bytes] = set()
        if ref is not None:
            found.update(b for (b,) in db.execute("SELECT b FROM links WHERE a = ?", (ref,)))
        found.update(
            t
            for (t,) in db.execute(
                "SELECT t.tid FROM links l JOIN traces t ON t.id = l.a WHERE l.b = ?", (tid,)
            )
        )
        return found

    def order_traces(self, key: str, max_traces: int = 500) -> list[str]:
        db = self._reader()
        seeds = [
            (ref, tid)
            for ref, tid in db.execute(
                "SELECT t.id, t.tid FROM keys k JOIN traces t ON t.id = k.trace "
                "WHERE k.value = ? ORDER BY t.id DESC LIMIT ?",
                (key.strip(), max_traces),
            )
        ]
        seen: dict[bytes, int] = {tid: ref for ref, tid in seeds}
        frontier = list(seeds)
        while frontier and len(seen) < max_traces:
            ref, tid = frontier.pop()
            for other in self._neighbours(ref, tid):
                if other in seen:
                    continue
                other_ref = self._trace_ref(other)
                if other_ref is None:
                    continue  # linked, but not stored (sampled out or evicted)
                seen[other] = other_ref
                frontier.append((other_ref, other))
        ordered = sorted(seen.items(), key=lambda item: item[1])
        return [tid.hex() for tid, _ in ordered]

    def spans_between(self, since_ns: int, until_ns: int, limit: int) -> list[StoredSpan]:
        # Through the traces' start index, newest traces first, each read as one range: the
        # window's spans without a scan of the whole table (a trace that started more than
        # `_TRACE_SLACK_NS` before the window is not looked into).
        rows = self._reader().execute(
            f"SELECT t.tid, {_SPAN_COLUMNS} FROM traces t JOIN spans s ON s.trace = t.id "
            "WHERE t.start >= ? AND t.start <= ? AND s.start >= ? AND s.start <= ? "
            "ORDER BY t.start DESC LIMIT ?",
            (since_ns - _TRACE_SLACK_NS, until_ns, since_ns, until_ns, limit),
        )
        spans = [self._span(row[0], row[1:]) for row in rows]
        spans.sort(key=lambda s: s.start_ns, reverse=True)
        return spans

    def window(self, since_ns: int, until_ns: int, limit: int) -> _rollup.WindowRollup:
        """Stage histograms, service-map edges and the decisions funnel of a window: the
        roll-ups of its whole minutes before the roll-up watermark, and the spans after it
        (at most `limit`, the newest)."""
        first = since_ns // _MINUTE_NS
        last = until_ns // _MINUTE_NS
        boundary = min(self.rollup_watermark_ns // _MINUTE_NS, last + 1)
        window = _rollup.read_window(self._reader(), first, boundary - 1)
        if boundary <= last:
            start = max(since_ns, boundary * _MINUTE_NS)
            spans = self.spans_between(start - _TRACE_SLACK_NS, until_ns, limit)
            window.spans_limited = len(spans) >= limit
            _rollup.add_spans(window, spans, start)
        return window

    def decision_spans(self, since_ns: int, until_ns: int, limit: int) -> list[StoredSpan]:
        """trading-bot's newest `decide` spans in the window (at most `limit`), each with the
        spans of its trace in trading-bot (its sizing, risk check and order)."""
        svc = self._lookup(_SERVICE, "trading-bot")
        op = self._lookup(_OPERATION, "decide")
        if svc is None or op is None:
            return []
        db = self._reader()
        found = db.execute(
            "SELECT DISTINCT t.tid, s.trace FROM spans s JOIN traces t ON t.id = s.trace "
            "WHERE s.svc = ? AND s.op = ? AND s.start >= ? AND s.start <= ? "
            "ORDER BY s.start DESC LIMIT ?",
            (svc, op, since_ns, until_ns, limit),
        ).fetchall()
        out: list[StoredSpan] = []
        for tid, ref in found:
            out.extend(
                self._span(tid, row)
                for row in db.execute(
                    f"SELECT {_SPAN_COLUMNS} FROM spans s WHERE s.trace = ? AND s.svc = ?",
                    (ref, svc),
                )
            )
        return out

    def stage_durations(self, since_ns: int, until_ns: int) -> dict[str, list[float]]:
        """Every stored span's duration in the window (sampled traces only: see
        `stage_quantiles` for quantiles over everything received)."""
        db = self._reader()
        out: dict[str, list[float]] = {}
        services = [r for (r,) in db.execute("SELECT id FROM names WHERE kind = ?", (_SERVICE,))]
        for svc in services:
            service = self._name(svc)
            for op, dur in db.execute(
                "SELECT op, dur FROM spans WHERE svc = ? AND start >= ? AND start <= ?",
                (svc, since_ns, until_ns),
            ):
                out.setdefault(f"{service}: {self._name(op)}", []).append(dur / 1e6)
        return out

    def stage_quantiles(
        self, since_ns: int, until_ns: int, quantiles: Iterable[float] = (0.5, 0.99, 0.999)
    ) -> dict[str, StageQuantiles]:
        """Per `service: operation`, quantiles of the duration of every span received in the
        window (whole minutes; counted before sampling), from the pre-aggregated histogram.
        Each value is within 1 % of the exact one."""
        wanted = sorted(quantiles)
        counts: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for svc, op, bucket, n in self._reader().execute(
            "SELECT svc, op, bucket, sum(n) FROM stage_hist WHERE minute >= ? AND minute <= ? "
            "GROUP BY svc, op, bucket",
            (since_ns // _MINUTE_NS, until_ns // _MINUTE_NS),
        ):
            counts.setdefault((svc, op), []).append((bucket, n))
        out: dict[str, StageQuantiles] = {}
        for (svc, op), buckets in counts.items():
            total = sum(n for _, n in buckets)
            values: dict[float, float] = {}
            seen = 0
            i = 0
            for bucket, n in buckets:  # GROUP BY returns the buckets in ascending order
                seen += n
                while i < len(wanted) and seen >= wanted[i] * total:
                    values[wanted[i]] = _bucket_ms(bucket)
                    i += 1
            while i < len(wanted):
                values[wanted[i]] = _bucket_ms(buckets[-1][0])
                i += 1
            out[f"{self._name(svc)}: {self._name(op)}"] = StageQuantiles(total, values)
        return out

    def logs_for_span(self, trace_id: str, span_id: str) -> list[LogRecord]:
        tid = self._tid(trace_id)
        try:
            sid = bytes.fromhex(span_id.strip())
        except ValueError:
            return []
        if tid is None:
            return []
        rows = self._reader().execute(
            "SELECT time, severity, body, svc, attrs FROM logs WHERE trace = ? AND span = ? "
            "ORDER BY time",
            (tid, sid),
        )
        return [
            LogRecord(
                time_ns=time_ns,
                severity=severity or "",
                body=body or "",
                service=self._name(svc),
                trace_id=tid.hex(),
                span_id=sid.hex(),
                # JSON text, or the OTLP record they came in (`otlp.log_rows`).
                attributes=_log_attributes(attrs),
            )
            for time_ns, severity, body, svc, attrs in rows
        ]

    def stats(self) -> StoreStats:
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        c = self._counters
        return StoreStats(
            spans=self._span_count,
            traces=self._trace_count,
            bytes_on_disk=size,
            received_spans=c["received_spans"],
            dropped_spans=c["dropped_spans"],
            evicted_spans=c["evicted_spans"],
            sampled_out_spans=c["sampled_out_spans"],
            rescued_spans=c["rescued_spans"],
            early_decided_traces=c["early_decided_traces"],
            rollup_restarts=c["rollup_restarts"],
        )

    # Search --------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> list[TraceSummary]:
        db = self._reader()
        limit = max(1, query.limit)
        span_filters = (
            query.service is not None
            or query.operation is not None
            or query.min_ms is not None
            or query.max_ms is not None
            or query.error is not None
            or bool(query.attributes)
        )
        where: list[str] = []
        args: list[Any] = []
        if not query.include_noise:
            where.append("t.flags & 2 = 0")
        keyed = [query.business_key] if query.business_key else []
        keyed += [
            value
            for key, value in query.attributes.items()
            if key.rsplit(".", 1)[-1] in BUSINESS_KEYS
        ]
        for value in keyed:
            where.append("t.id IN (SELECT trace FROM keys WHERE value = ?)")
            args.append(str(value).strip())
        if not span_filters:
            if query.since_ns is not None:
                where.append("t.start >= ?")
                args.append(query.since_ns)
            if query.until_ns is not None:
                where.append("t.start <= ?")
                args.append(query.until_ns)
            sql = "SELECT t.id FROM traces t"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY t.start DESC LIMIT ?"
            refs = [r for (r,) in db.execute(sql, (*args, limit))]
            return self._summaries(refs, {})

        names = [query.service] if query.service is not None else []
        svc = self._lookup(_SERVICE, query.service) if query.service is not None else None
        op = self._lookup(_OPERATION, query.operation) if query.operation is not None else None
        if (query.service is not None and svc is None) or (
            query.operation is not None and op is None
        ):
            return []
        del names
        if svc is not None:
            where.append("s.svc = ?")
            args.append(svc)
        if op is not None:
            where.append("s.op = ?")
            args.append(op)
        if query.min_ms is not None:
            where.append("s.dur >= ?")
            args.append(int(query.min_ms * 1e6))
        if query.max_ms is not None:
            where.append("s.dur <= ?")
            args.append(int(query.max_ms * 1e6))
        if query.error is not None:
            where.append("s.flags & 1 = ?")
            args.append(1 if query.error else 0)
        if query.since_ns is not None:
            where.append("s.start >= ?")
            args.append(query.since_ns)
        if query.until_ns is not None:
            where.append("s.start <= ?")
            args.append(query.until_ns)
        # Without a service, newest traces first (references grow with first arrival).
        order = "s.start DESC" if svc is not None else "s.trace DESC"
        sql = (
            "SELECT s.trace, s.sid, s.attrs FROM spans s JOIN traces t ON t.id = s.trace "
            f"WHERE {' AND '.join(where)} ORDER BY {order}"
        )
        wanted = {k: v for k, v in query.attributes.items()}
        matched: dict[int, list[str]] = {}
        scanned = 0
        for ref, sid, attrs in db.execute(sql, args):
            scanned += 1
            if scanned > 1_000_000:
                break
            if wanted and not self._attrs_match(attrs, wanted):
                continue
            hits = matched.get(ref)
            if hits is None:
                if len(matched) >= limit:
                    break
                hits = matched[ref] = []
            hits.append(sid.hex())
        return self._summaries(list(matched), matched)

    def _lookup(self, kind: int, name: str | None) -> int | None:
        if name is None:
            return None
        found = self._names.get((kind, name))
        if found is None:
            row = (
                self._reader()
                .execute("SELECT id FROM names WHERE kind = ? AND name = ?", (kind, name))
                .fetchone()
            )
            found = None if row is None else int(row[0])
        return found

    def _attrs_match(self, attrs: bytes | None, wanted: dict[str, str]) -> bool:
        have = self._attributes(attrs)
        for key, value in wanted.items():
            if key not in have:
                return False
            got = have[key]
            text = "true" if got is True else "false" if got is False else str(got)
            if text != value and str(got) != value:
                return False
        return True

    def _summaries(self, refs: list[int], matched: dict[int, list[str]]) -> list[TraceSummary]:
        db = self._reader()
        out = []
        for ref in refs:
            row = db.execute(
                "SELECT tid, start, end, spans, errors, root_svc, root_op FROM traces WHERE id = ?",
                (ref,),
            ).fetchone()
            if row is None:
                continue
            tid, start, end, spans, errors, root_svc, root_op = row
            services = sorted(
                self._name(s)
                for (s,) in db.execute("SELECT DISTINCT svc FROM spans WHERE trace = ?", (ref,))
            )
            if root_svc is None:
                first = db.execute(
                    "SELECT svc, op FROM spans WHERE trace = ? ORDER BY start LIMIT 1", (ref,)
                ).fetchone()
                root_svc, root_op = first if first else (None, None)
            out.append(
                TraceSummary(
                    trace_id=tid.hex(),
                    root=f"{self._name(root_svc)}: {self._name(root_op)}",
                    services=tuple(services),
                    spans=spans,
                    errors=errors,
                    start_ns=start,
                    duration_ms=round((end - start) / 1e6, 3),
                    matched_span_ids=tuple(matched.get(ref, ())),
                )
            )
        out.sort(key=lambda s: s.start_ns, reverse=True)
        return out
