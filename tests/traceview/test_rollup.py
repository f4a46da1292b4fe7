"""Per-minute roll-ups: the window pages' numbers read from them equal the numbers computed span
by span over the same stored spans (quantiles within the histogram's 2 % buckets), whatever
part of the window is rolled up yet, after a clean restart and after a killed writer; and
retention removes them with the spans they summarise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend.infra.traceview import _analysis as analysis
from backend.infra.traceview._decode import _decode_in_child
from backend.infra.traceview._rollup import (
    NO_WATERMARK,
    Histogram,
    RecordSpans,
    Rollup,
    WindowRollup,
    breakdown,
    slim,
    write_rows,
)
from backend.infra.traceview._rollup import (
    SCHEMA as ROLLUP_SCHEMA,
)
from backend.infra.traceview._sqlstore import SqliteSpanStore, _record
from backend.infra.traceview._store import StoredSpan
from bench.collector import Traffic, payloads
from tests.traceview.seed import Builder, seeded

MINUTE_NS = 60 * 10**9
REPO = Path(__file__).resolve().parents[2]


def open_store(path: Path, **kw: Any) -> SqliteSpanStore:
    kw.setdefault("hold_s", 0.0)
    kw.setdefault("tick_sample_rate", 1.0)
    kw.setdefault("noise_sample_rate", 1.0)
    return SqliteSpanStore(path, **kw)


def feed(store: SqliteSpanStore, now_ns: int, *, spans: int = 6_000, seed: int = 3) -> None:
    """Bench traffic over the 8 minutes before the last one (through OTLP, in batches of 512,
    so a trade's fill and stop traces come in later batches), and the pages' seed traces
    (fills of resting orders, skipped decisions, noise) in the last minute."""
    traffic = Traffic(seed, now_ns - 9 * MINUTE_NS, 8 * 60.0, spans)
    for payload in payloads(traffic, spans):
        assert store.ingest_otlp(payload)[1] == 0
    store.ingest(seeded(now_ns)[0])


def copy_of(spans: list[StoredSpan], digit: str) -> list[StoredSpan]:
    """The seed's traces under other trace ids and order ids."""
    for s in spans:
        s.trace_id = digit + s.trace_id[1:]
        s.links = [(digit + t[1:], sid) for t, sid in s.links]
        s.attributes = {
            k: f"{v}-{digit}" if isinstance(v, str) and v.startswith("qt-") else v
            for k, v in s.attributes.items()
        }
    return spans


def by_span(store: SqliteSpanStore, since: int, until: int) -> list[StoredSpan]:
    return store.spans_between(since, until, 10**9)


def assert_same_as_span_by_span(view: WindowRollup, spans: list[StoredSpan]) -> None:
    rolled = {b.stage: b for b in breakdown(view)}
    exact = {b.stage: b for b in analysis.stage_breakdown(spans)}
    assert set(rolled) == set(exact)
    assert analysis.TICK_TO_TRADE in rolled
    for stage, want in exact.items():
        got = rolled[stage]
        assert got.count == want.count, stage
        for part in ("wait", "service", "sql", "total"):
            a, b = getattr(got, part), getattr(want, part)
            assert set(a) == set(b), (stage, part)
            for q, value in b.items():
                assert a[q].value_ms == pytest.approx(value.value_ms, rel=0.011, abs=0.0015), (
                    stage,
                    part,
                    q,
                )
    assert view.edges == analysis.edge_counts(spans)
    assert analysis.funnel_rows(view.funnel) == analysis.funnel(analysis.decisions(spans), spans)


@pytest.mark.parametrize("processes", [0, 1], ids=["in-writer", "child-process"])
def test_the_window_from_roll_ups_equals_the_span_by_span_answer(
    tmp_path: Path, processes: int
) -> None:
    now = time.time_ns()
    since, until = now - 15 * MINUTE_NS, now
    with open_store(tmp_path / "s.sqlite", rollup_processes=processes) as store:
        feed(store, now)
        store.flush()
        assert store.rollup_watermark_ns == NO_WATERMARK
        view = store.window(since, until, 50_000)
        assert view.rolled_minutes == 16 and view.spans_read == 0
        spans = by_span(store, since, until)
        assert_same_as_span_by_span(view, spans)
        rows = {r.symbol: r for r in analysis.funnel_rows(view.funnel)}
        assert any(r.filled for r in rows.values()), "a fill in a later trace is counted"
        # Every number links to a stored example trace.
        for b in breakdown(view):
            for q in b.total.values():
                assert store.trace(q.trace_id), b.stage


@pytest.mark.parametrize("processes", [0, 1], ids=["in-writer", "child-process"])
def test_the_part_of_a_window_not_rolled_up_yet_is_read_from_the_spans(
    tmp_path: Path, processes: int
) -> None:
    """Traces written but still settling are read span by span; the window adds them to the
    roll-ups of the minutes before them, counting nothing twice."""
    now = time.time_ns()
    since, until = now - 15 * MINUTE_NS, now
    with open_store(tmp_path / "s.sqlite", hold_s=3600.0, rollup_processes=processes) as store:
        feed(store, now, spans=3_000)
        store.flush()  # everything decided, written and rolled up
        store.ingest(copy_of(seeded(now + 10**9)[0], "9"))  # a second later
        store.flush(decide=False)  # important traces written, not settled (hold: an hour)
        assert store.rollup_watermark_ns < NO_WATERMARK
        view = store.window(since, until + 2 * 10**9, 50_000)
        assert view.rolled_minutes > 0 and view.spans_read > 0
        assert_same_as_span_by_span(view, by_span(store, since, until + 2 * 10**9))


def test_roll_ups_survive_a_restart_and_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    now = time.time_ns()
    since, until = now - 15 * MINUTE_NS, now + MINUTE_NS
    with open_store(path) as store:
        feed(store, now, spans=3_000)
    with open_store(path) as store:
        view = store.window(since, until, 50_000)
        assert view.spans_read == 0
        assert_same_as_span_by_span(view, by_span(store, since, until))
    # A collector killed while traces settle: the spans are in the file, their roll-ups not.
    script = textwrap.dedent(
        f"""
        import os, time
        from backend.infra.traceview._sqlstore import SqliteSpanStore
        from tests.traceview.seed import Builder, seeded
        from tests.traceview.test_rollup import copy_of
        store = SqliteSpanStore({str(path)!r}, hold_s=3600.0, tick_sample_rate=1.0,
                                noise_sample_rate=1.0)
        store.ingest(copy_of(seeded({now + 2 * 10**9})[0], "7"))
        store.flush(decide=False)
        assert store.rollup_watermark_ns < {NO_WATERMARK}
        os._exit(0)  # no close: what the writer held in memory is gone
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=os.environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    with open_store(path) as store:
        assert store.rollup_watermark_ns == NO_WATERMARK  # rolled up again at start
        view = store.window(since, until, 50_000)
        assert view.spans_read == 0
        spans = by_span(store, since, until)
        assert any(s.trace_id.startswith("7") for s in spans)
        assert_same_as_span_by_span(view, spans)


def test_a_killed_roll_up_process_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """SIGKILL the roll-up child while it holds traces not rolled up (and rows not written):
    the writer rolls up again from the watermark in the file and starts another child."""
    now = time.time_ns()
    since, until = now - 15 * MINUTE_NS, now + MINUTE_NS
    with open_store(tmp_path / "s.sqlite", hold_s=3600.0, rollup_processes=1) as store:
        feed(store, now, spans=3_000)
        store.flush()
        store.ingest(copy_of(seeded(now + 10**9)[0], "9"))
        store.flush(decide=False)  # written, held by the child (settles in an hour)
        assert store.rollup_watermark_ns < NO_WATERMARK
        first = store._roller.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        store.ingest(copy_of(seeded(now + 2 * 10**9)[0], "8"))
        store.flush()
        assert store.stats().rollup_restarts == 1
        assert store._roller.pid not in (None, first)
        assert store.rollup_watermark_ns == NO_WATERMARK
        view = store.window(since, until, 50_000)
        assert view.spans_read == 0
        spans = by_span(store, since, until)
        assert {"8", "9"} <= {s.trace_id[0] for s in spans}
        assert_same_as_span_by_span(view, spans)
        # The new child rolls up what comes next.
        store.ingest(copy_of(seeded(now + 3 * 10**9)[0], "6"))
        store.flush()
        spans = by_span(store, since, until)
        assert_same_as_span_by_span(store.window(since, until, 50_000), spans)
        assert store.stats().rollup_restarts == 1


def test_the_roll_up_process_exits_with_the_collector(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from backend.infra.traceview._sqlstore import SqliteSpanStore
        store = SqliteSpanStore({str(tmp_path / "s.sqlite")!r}, rollup_processes=1)
        print(store._roller.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=os.environ, capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists()


def test_retention_by_age_removes_the_roll_ups_of_the_minutes_it_evicts(tmp_path: Path) -> None:
    now = time.time_ns()
    old = now - 3 * 3600 * 10**9
    with open_store(tmp_path / "s.sqlite", max_age_s=3600.0) as store:
        store.ingest(copy_of(seeded(old)[0], "5"))
        store.ingest(seeded(now)[0])
        store.flush()
        assert store.window(old - 2 * MINUTE_NS, old, 50_000).stages == {}
        assert store.window(old - 2 * MINUTE_NS, old, 50_000).funnel == {}
        recent = store.window(now - 2 * MINUTE_NS, now, 50_000)
        assert_same_as_span_by_span(recent, by_span(store, now - 2 * MINUTE_NS, now))


def test_a_histogram_round_trips_with_an_example_trace_per_bucket() -> None:
    h = Histogram()
    for n in range(1, 1001):
        h.add(n / 100, n.to_bytes(16, "big"))
    h.add(0.0, b"\0" * 16)
    again = Histogram.decode(h.encode())
    assert again == h and again.count == 1001
    q = again.quantiles()
    assert q[0.5].value_ms == pytest.approx(5.0, rel=0.011)
    assert q[0.999].value_ms == pytest.approx(10.0, rel=0.011)
    # The example of a quantile is a trace whose sample is in that quantile's bucket.
    example = int(q[0.99].trace_id, 16) / 100
    assert example == pytest.approx(q[0.99].value_ms, rel=0.011)
    assert Histogram.decode(b"") == Histogram()


def test_the_window_pages_read_the_roll_ups(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from backend.infra.traceview import create_app

    now = time.time_ns()
    with open_store(tmp_path / "s.sqlite") as store:
        feed(store, now, spans=2_000)
        store.flush()
        spans = by_span(store, now - 15 * MINUTE_NS, now)
        client = TestClient(create_app(store, ingest_routes=[]))
        stages = client.get("/stages?window=15m").text
        assert "per-minute roll-ups of 16 minutes." in stages
        assert analysis.TICK_TO_TRADE in stages and "/trace/" in stages
        api = {row["stage"]: row for row in client.get("/api/stages?window=15m").json()["data"]}
        assert {k: v["count"] for k, v in api.items()} == {
            b.stage: b.count for b in analysis.stage_breakdown(spans)
        }
        decisions = client.get("/decisions?window=15m&q=LOW_CONFIDENCE").text
        assert "SKIPPED LOW_CONFIDENCE: 1" in decisions and "gbm-7" in decisions
        edges = client.get("/api/map?window=15m").json()["data"]
        assert {(e["caller"], e["callee"]): e["requests"] for e in edges} == {
            (a, b): n for (a, b, _), (n, _) in analysis.edge_counts(spans).items()
        }


def test_the_writer_waits_for_a_roll_up_process_too_far_behind() -> None:
    """A stopped child (SIGSTOP) answers nothing: the writer sends at most `max_unanswered`
    batches more, then waits; once the child runs again everything is answered."""
    from backend.infra.traceview._rollproc import RollupProcess

    roller = RollupProcess(1.0)
    roller.max_unanswered = 2
    assert roller.pid is not None
    record = (b"t" * 16, b"s" * 8, None, "svc", "op", 1, 10, 20, False, None, None, (), None)
    done: list[int] = []

    def write() -> None:
        for n in range(6):
            roller.submit([record], 0.0, force=False)
            roller.collect(wait=False)
            done.append(n)

    os.kill(roller.pid, signal.SIGSTOP)
    try:
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(2.0)
        assert writer.is_alive() and len(done) == 2  # a third batch sent: 3 > 2, waiting
    finally:
        os.kill(roller.pid, signal.SIGCONT)
    writer.join(60)
    assert len(done) == 6
    _, watermark = roller.collect(wait=True)
    assert watermark == 10  # the span is held until its trace settles
    roller.close()


def _rows_by_key(rollup: Rollup) -> dict[Any, tuple[Any, ...]]:
    return {key: (n, errors, total, buckets) for key, n, errors, total, buckets in rollup.take()}


@pytest.mark.parametrize("slimmed", [False, True], ids=["records", "slim-records"])
def test_rows_of_records_equal_rows_of_spans(slimmed: bool) -> None:
    """The roll-ups' one pass over written records gives exactly the rows the pages' analysis
    gives over the same records made spans (`RecordSpans`): counts, errors, sums and every
    histogram bucket with its example trace, batch after batch (late spans, fills and stops
    linked to traces of earlier batches, the seed's decisions, SQL, HTTP calls and errors)."""
    now = time.time_ns()
    traffic = Traffic(5, now - 9 * MINUTE_NS, 8 * 60.0, 20_000)
    records = [r for payload in payloads(traffic, 20_000) for r in _decode_in_child(payload)]
    seed = seeded(now)[0]
    records += [_record(s) for s in seed]
    records += [_record(s) for s in copy_of(seeded(now)[0], "9")]
    # Approved by risk and rejected after: the funnel reads the risk check's `approved`.
    b = Builder("7" * 32, now - 30 * 10**9)
    decide = b.add(None, "trading-bot", "decide", 0, 9, symbol="BTCUSDT", outcome="REJECTED")
    b.add(decide, "trading-bot", "risk_check", 1, 2, approved=True, client_order_id="qt-r")
    b.add(decide, "trading-bot", "submit_order", 3, 8, error=True)
    records += [_record(s) for s in b.spans]
    if slimmed:
        records = slim(records)
    fast, reference = Rollup(1.0), Rollup(1.0)
    to_spans = RecordSpans()
    batches = 0
    for i in range(0, len(records), 1500):
        traces: dict[bytes, list[Any]] = {}
        for r in records[i : i + 1500]:
            traces.setdefault(r[0], []).append(r)
        fast.roll_records(list(traces.values()))
        reference.roll(to_spans([r for trace in traces.values() for r in trace]))
        batches += 1
    got, want = _rows_by_key(fast), _rows_by_key(reference)
    assert batches > 10 and len(want) > 100
    assert {k[1] for k in want} >= {"wait", "service", "sql", "total", "edge", "signals"}
    assert {k[1] for k in want} >= {"approved", "filled", "skip"}
    assert got == want


def test_roll_up_rows_written_at_once_equal_rows_written_one_by_one() -> None:
    """`write_rows` reads a batch's minutes in one query: a key already in the file, or twice
    in the batch (the answers of two roll-ups), adds up as if written one row at a time, and
    a bucket keeps the newest example trace."""
    import sqlite3

    def row(minute: int, key: str, n: int, tid: bytes) -> Any:
        return ((minute, "total", key), n, n // 2, n * 1.5, {7: [n, tid], 9 + n: [1, tid]})

    def batches() -> list[list[Any]]:  # new each time: writing merges into the lists
        return [
            [row(1, "a", 2, b"1" * 16), row(2, "b", 3, b"2" * 16)],
            [
                row(1, "a", 4, b"3" * 16),
                row(1, "a", 5, b"4" * 16),
                row(3, "c", 1, b"5" * 16),
                ((2, "edge", "x\x1fy\x1fhttp"), 3, 1, 0.0, None),
            ],
        ]

    files = []
    for at_once in (True, False):
        db = sqlite3.connect(":memory:")
        db.executescript(ROLLUP_SCHEMA)
        for rows in batches():
            for part in [rows] if at_once else [[r] for r in rows]:
                write_rows(db, part)
        files.append(sorted(db.execute("SELECT * FROM rollups")))
    assert files[0] == files[1]
    a = next(r for r in files[0] if r[:3] == (1, "total", "a"))
    assert a[3] == 11 and Histogram.decode(a[6]).buckets[7] == [11, b"4" * 16]


def test_the_watermark_is_the_earliest_start_among_the_traces_still_held() -> None:
    """After a roll-up takes the settled traces, the watermark is the earliest start among
    the spans of the traces still waiting, wherever in a trace that span came."""

    def record(trace: bytes, span: bytes, start: int) -> tuple[Any, ...]:
        return (
            trace * 16,
            span * 8,
            None,
            "svc",
            "op",
            1,
            start,
            start + 5,
            False,
            None,
            None,
            (),
            None,
        )

    rollup = Rollup(settle_s=10.0, interval_s=0.0)
    rollup.add([record(b"a", b"1", 100)], now=0.0)
    rollup.add([record(b"b", b"2", 300), record(b"c", b"3", 500)], now=5.0)
    rollup.add([record(b"b", b"4", 250), record(b"c", b"5", 400)], now=6.0)
    assert rollup.watermark_ns == 100
    rollup.settle(11.0)  # "a" settles; "b" and "c" wait
    assert rollup.watermark_ns == 250
    rollup.settle(16.0)
    assert rollup.watermark_ns == NO_WATERMARK
