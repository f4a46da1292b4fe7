"""The span store's writer: what it asks of the file while it writes."""

from __future__ import annotations

import time
from pathlib import Path

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
