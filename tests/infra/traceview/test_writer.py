"""The span store's writer: what it asks of the file while it writes."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from backend.infra.traceview._rollproc import RollupProcess
from backend.infra.traceview._serve import collect_garbage_less_often
from backend.infra.traceview._sqlstore import SqliteSpanStore
from tests.traceview.test_sqlstore import open_store, tid, trade


def lookups_of_trace_ids(store: SqliteSpanStore) -> list[str]:
    """Record the writer's look-ups of trace ids in the file from now on."""
    seen: list[str] = []

    def on_statement(sql: str) -> None:
        if "FROM traces WHERE tid IN" in sql:
            seen.append(sql)

    store._db.set_trace_callback(on_statement)
    return seen


def test_only_a_reopened_file_has_trace_ids_looked_up_in_it(tmp_path: Path) -> None:
    """A new file's writer knows every trace in it: a trace id it does not know is new."""
    path = tmp_path / "spans.sqlite"
    with open_store(path) as store:
        seen = lookups_of_trace_ids(store)
        for n in range(1, 4):
            store.ingest(trade(n, f"c-{n}"))
            store.flush()
        store.ingest(trade(1, "c-1")[:1])  # a late span of a trace written before
        store.flush()
        assert seen == []
        assert store.stats().traces == 3
        assert len(store.trace(tid(1))) == 5
    with open_store(path) as store:
        seen = lookups_of_trace_ids(store)
        store.ingest(trade(1, "c-1")[:1])
        store.flush()
        assert seen
        assert store.stats().traces == 3
        assert len(store.trace(tid(1))) == 6


def test_after_an_eviction_a_late_span_of_an_evicted_trace_starts_it_again(
    tmp_path: Path,
) -> None:
    old = time.time_ns() - 3600 * 10**9
    with open_store(tmp_path / "spans.sqlite", max_age_s=600) as store:
        store.ingest(trade(1, "c-old", base_ns=old))
        store.ingest(trade(2, "c-new"))
        store.flush()
        assert store.trace(tid(1)) == []
        seen = lookups_of_trace_ids(store)
        store.ingest(trade(1, "c-old")[:1])  # now within the age limit
        store.ingest(trade(2, "c-new")[:1])
        store.flush()
        assert seen == []
        assert len(store.trace(tid(1))) == 1
        assert len(store.trace(tid(2))) == 5
        assert store.stats().traces == 2


def span_transactions(
    store: SqliteSpanStore, waiting: threading.Event, hold: threading.Event
) -> list[int]:
    """From now on: the writer waits at its next transaction (`waiting` is set) until `hold`
    is set; the transactions that wrote spans are counted as they commit."""
    commits: list[int] = []
    state = {"held": False, "spans": False}

    def on_statement(sql: str) -> None:
        if sql == "BEGIN":
            state["spans"] = False
            if not state["held"]:
                state["held"] = True
                waiting.set()
                hold.wait(30)
        elif sql.startswith("INSERT OR IGNORE INTO spans"):
            state["spans"] = True
        elif sql == "COMMIT" and state["spans"]:
            commits.append(1)

    store._db.set_trace_callback(on_statement)
    return commits


def test_what_queued_up_while_the_writer_was_busy_is_written_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Fifteen requests of 1,000 spans that wait for the writer go into the file together, in
    one transaction (a commit writes every page it changed into the log, so fewer commits of
    more spans write less), not one per 4,096 spans."""
    waiting, hold = threading.Event(), threading.Event()
    per_trade = len(trade(1, "c-1"))
    with open_store(tmp_path / "spans.sqlite") as store:
        commits = span_transactions(store, waiting, hold)
        store.ingest(trade(1, "c-1"))
        assert waiting.wait(30)
        for request in range(15):
            first = 2 + request * 250
            store.ingest([s for n in range(250) for s in trade(first + n, f"c-{first + n}")])
        assert store.queue_depth >= 15 * 250 * per_trade
        hold.set()
        store.flush()
        assert len(store.trace(tid(3751))) == per_trade
        assert store.stats().spans == 3751 * per_trade
    assert len(commits) <= 2  # the first request may have had one of its own


def test_the_writer_waits_for_a_roll_up_process_too_many_spans_behind() -> None:
    """However few batches they are, more than `max_unanswered_spans` spans not answered by a
    stopped child (SIGSTOP) make the writer wait; once it runs again all is answered."""
    roller = RollupProcess(1.0)
    roller.max_unanswered = 1000
    roller.max_unanswered_spans = 5
    assert roller.pid is not None
    record = (b"t" * 16, b"s" * 8, None, "svc", "op", 1, 10, 20, False, None, None, (), None)
    done: list[int] = []

    def write() -> None:
        for n in range(4):
            roller.submit([record] * 3, 0.0, force=False)
            roller.collect(wait=False)
            done.append(n)

    os.kill(roller.pid, signal.SIGSTOP)
    try:
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(2.0)
        assert writer.is_alive() and len(done) == 1  # a second batch: 6 spans > 5, waiting
    finally:
        os.kill(roller.pid, signal.SIGCONT)
    writer.join(60)
    assert len(done) == 4
    roller.collect(wait=True)
    roller.close()


def test_the_collector_process_collects_garbage_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is loaded by the time the collector serves is out of every collection, and the
    youngest generation waits for 50,000 allocations."""
    monkeypatch.delenv("GC_FREEZE_AFTER_START", raising=False)
    before = gc.get_threshold()
    try:
        collect_garbage_less_often()
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
