"""The SQLite span store: what goes in comes back, survives a restart, and retention keeps what
matters within the bounds it is given."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend.infra.traceview._importance import Importance, trace_importance
from backend.infra.traceview._queries import LogRecord, SearchQuery
from backend.infra.traceview._sqlstore import SqliteSpanStore
from backend.infra.traceview._store import StoredSpan

MS = 1_000_000
_ids = itertools.count(1)


def tid(n: int) -> str:
    return f"{n:032x}"


def span(
    trace: int,
    name: str = "process market.ticks",
    *,
    service: str = "trading-bot",
    parent: str = "",
    start_ms: float = 0.0,
    duration_ms: float = 1.0,
    kind: str = "consumer",
    error: bool = False,
    links: list[tuple[str, str]] | None = None,
    base_ns: int | None = None,
    **attributes: Any,
) -> StoredSpan:
    base = time.time_ns() if base_ns is None else base_ns
    start = base + int(start_ms * MS)
    return StoredSpan(
        trace_id=tid(trace),
        span_id=f"{next(_ids):016x}",
        parent_span_id=parent,
        name=name,
        kind=kind,
        service=service,
        start_ns=start,
        end_ns=start + int(duration_ms * MS),
        attributes=attributes,
        error=error,
        links=links or [],
        resource={"service.name": service},
    )


def trade(trace: int, coid: str, **kw: Any) -> list[StoredSpan]:
    """A small trade trace: a tick consumed, a decision that orders, a risk check, a submit."""
    root = span(trace, "process market.ticks", symbol="BTCUSDT", **kw)
    decide = span(
        trace,
        "decide",
        parent=root.span_id,
        kind="internal",
        outcome="ORDERED",
        client_order_id=coid,
        symbol="BTCUSDT",
        **kw,
    )
    risk = span(
        trace,
        "risk.check",
        service="risk-safety",
        parent=decide.span_id,
        kind="internal",
        client_order_id=coid,
        approved=True,
        **kw,
    )
    submit = span(
        trace,
        "order.submit",
        service="execution",
        parent=risk.span_id,
        kind="internal",
        **{"order.client_order_id": coid, "order.symbol": "BTCUSDT"},
        **kw,
    )
    return [root, decide, risk, submit]


def tick(trace: int, **kw: Any) -> list[StoredSpan]:
    root = span(trace, "process market.ticks", symbol="BTCUSDT", **kw)
    return [root, span(trace, "decide", parent=root.span_id, outcome="SKIPPED", **kw)]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "traces" / "spans.sqlite"


def open_store(path: Path, **kw: Any) -> SqliteSpanStore:
    kw.setdefault("hold_s", 0.0)
    kw.setdefault("tick_sample_rate", 1.0)
    kw.setdefault("noise_sample_rate", 1.0)
    return SqliteSpanStore(path, **kw)


def test_a_trace_comes_back_as_it_went_in(db_path: Path) -> None:
    spans = trade(1, "c-1")
    spans[0].events = [("received", {"bytes": 120})]
    spans[0].links = [(tid(99), "00000000000000aa")]
    spans[2].error = True
    spans[2].status_message = "limit breached"
    spans[1].attributes["features"] = [1.5, 2.5]
    with open_store(db_path) as store:
        assert store.ingest(spans) == 0
        store.flush()
        got = store.trace(tid(1))
    assert [(s.span_id, s.name) for s in got] == [(s.span_id, s.name) for s in spans]
    for want, have in zip(spans, got, strict=True):
        assert have == want


def test_an_unknown_or_malformed_trace_id_is_empty(db_path: Path) -> None:
    with open_store(db_path) as store:
        assert store.trace(tid(5)) == []
        assert store.trace("not hex") == []


def test_spans_survive_a_restart(db_path: Path) -> None:
    with open_store(db_path) as store:
        store.ingest(trade(1, "c-1"))
        store.flush()
        assert len(store.trace(tid(1))) == 4
    wal = db_path.with_name(db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the log is folded into the file"
    with open_store(db_path) as store:
        assert len(store.trace(tid(1))) == 4
        stats = store.stats()
        assert (stats.spans, stats.traces, stats.received_spans) == (4, 1, 4)
        assert store.order_traces("c-1") == [tid(1)]


def test_spans_of_one_trace_in_several_batches_make_one_trace(db_path: Path) -> None:
    spans = trade(1, "c-1")
    with open_store(db_path) as store:
        store.ingest(spans[:2])
        store.flush()
        store.ingest(spans[2:])
        store.flush()
        (summary,) = store.search(SearchQuery())
        assert summary.spans == 4
        assert summary.services == ("execution", "risk-safety", "trading-bot")
        assert summary.root == "trading-bot: process market.ticks"
        assert store.stats().traces == 1


def test_business_keys_find_the_trace_whatever_the_attribute_prefix(db_path: Path) -> None:
    with open_store(db_path) as store:
        store.ingest(trade(1, "c-1") + trade(2, "c-2"))
        store.ingest([span(3, "signal", service="ai-engine", model_version="m-7")])
        store.flush()
        assert [t.trace_id for t in store.search(SearchQuery(business_key="c-2"))] == [tid(2)]
        assert [t.trace_id for t in store.search(SearchQuery(business_key="m-7"))] == [tid(3)]
        by_attr = store.search(SearchQuery(attributes={"order.client_order_id": "c-1"}))
        assert [t.trace_id for t in by_attr] == [tid(1)]
        (hit,) = by_attr
        submit = [s for s in store.trace(tid(1)) if s.name == "order.submit"]
        assert hit.matched_span_ids == (submit[0].span_id,)
        assert len(store.search(SearchQuery(business_key="BTCUSDT"))) == 2
        assert store.search(SearchQuery(business_key="c-404")) == []


def test_search_by_service_duration_and_error_newest_first(db_path: Path) -> None:
    base = time.time_ns()
    with open_store(db_path) as store:
        for n in range(1, 11):
            store.ingest(
                [
                    span(
                        n,
                        "order.submit",
                        service="execution",
                        base_ns=base + n * MS,
                        duration_ms=n,
                        error=n == 9,
                    )
                ]
            )
        store.flush()
        slow = store.search(SearchQuery(service="execution", min_ms=4.5, max_ms=8.5, limit=3))
        assert [t.trace_id for t in slow] == [tid(8), tid(7), tid(6)]
        assert [t.trace_id for t in store.search(SearchQuery(error=True))] == [tid(9)]
        assert store.search(SearchQuery(service="nobody")) == []
        ops = store.search(SearchQuery(operation="order.submit", limit=100))
        assert len(ops) == 10


def test_links_are_followed_both_ways_and_transitively(db_path: Path) -> None:
    # signal trace 1 <- order trace 2 (links to 1) <- fill trace 3 (links to 2) <- exit 4 (to 3)
    with open_store(db_path) as store:
        store.ingest([span(1, "signal", service="ai-engine")])
        store.ingest(trade(2, "c-9", links=[(tid(1), "0000000000000001")]))
        store.ingest([span(3, "fill", service="execution", links=[(tid(2), "0000000000000002")])])
        store.ingest(
            [span(4, "stop.trigger", service="position-monitor", links=[(tid(3), "03" * 8)])]
        )
        store.ingest(trade(5, "c-other"))
        store.flush()
        assert store.linked_traces(tid(2)) == [tid(1), tid(3)]
        assert store.linked_traces(tid(1)) == [tid(2)]
        assert store.linked_traces(tid(5)) == []
        assert sorted(store.order_traces("c-9")) == [tid(1), tid(2), tid(3), tid(4)]
        assert store.order_traces("c-other") == [tid(5)]
        assert store.order_traces("nothing") == []


def test_noise_is_marked_and_hidden_unless_asked_for(db_path: Path) -> None:
    with open_store(db_path) as store:
        store.ingest(
            [span(1, "SELECT", service="execution", kind="client", **{"db.query.text": "SELECT 1"})]
        )
        store.ingest([span(2, "GET /metrics", service="execution", kind="server")])
        store.ingest(tick(3))
        store.flush()
        assert [t.trace_id for t in store.search(SearchQuery())] == [tid(3)]
        everything = store.search(SearchQuery(include_noise=True))
        assert sorted(t.trace_id for t in everything) == [tid(1), tid(2), tid(3)]
        assert store.search(SearchQuery(service="execution")) == []


def test_importance_keeps_orders_fills_denials_stops_and_errors() -> None:
    assert trace_importance(trade(1, "c")) is Importance.IMPORTANT
    assert trace_importance(tick(1)) is Importance.PLAIN
    assert trace_importance([span(1, "fill", service="execution")]) is Importance.IMPORTANT
    assert trace_importance([span(1, "stop.trigger")]) is Importance.IMPORTANT
    assert trace_importance([span(1, "x", approved=False)]) is Importance.IMPORTANT
    assert trace_importance([span(1, "x", outcome="DENIED")]) is Importance.IMPORTANT
    assert trace_importance([span(1, "x", error=True)]) is Importance.IMPORTANT
    assert trace_importance([span(1, "XREADGROUP", kind="client")]) is Importance.NOISE


def test_ticks_are_sampled_down_and_important_traces_always_kept(db_path: Path) -> None:
    with open_store(db_path, tick_sample_rate=0.25, noise_sample_rate=0.0) as store:
        for n in range(1, 401):
            store.ingest(tick(n))
        for n in range(1001, 1101):
            store.ingest(trade(n, f"c-{n}"))
        for n in range(2001, 2051):
            store.ingest([span(n, "decide", outcome="DENIED"), span(n, "x", error=True)])
        for n in range(3001, 3051):
            store.ingest([span(n, "PING", kind="client")])
        store.flush()
        kept_ticks = [n for n in range(1, 401) if store.trace(tid(n))]
        assert all(store.trace(tid(n)) for n in range(1001, 1101))
        assert all(store.trace(tid(n)) for n in range(2001, 2051))
        assert not any(store.trace(tid(n)) for n in range(3001, 3051))
        # Trace ids are uniformly spread here, so about a quarter of the ticks stay.
        assert 60 <= len(kept_ticks) <= 140
        # A kept tick keeps all its spans: the decision is per trace.
        assert all(len(store.trace(tid(n))) == 2 for n in kept_ticks)
        stats = store.stats()
        assert stats.sampled_out_spans == (400 - len(kept_ticks)) * 2 + 50
        assert stats.received_spans == 800 + 400 + 100 + 50


def test_a_held_trace_that_turns_important_is_kept_whole(db_path: Path) -> None:
    root, decide = tick(1)
    decide.attributes["outcome"] = "ORDERED"
    decide.attributes["client_order_id"] = "c-1"
    with open_store(db_path, hold_s=60.0, tick_sample_rate=0.0) as store:
        store.ingest([root])
        store.ingest([decide])
        store.flush()
        assert [s.name for s in store.trace(tid(1))] == ["process market.ticks", "decide"]


def test_a_late_span_that_makes_a_sampled_out_trace_important_keeps_it_whole(
    db_path: Path,
) -> None:
    root, decide = tick(1)
    decide.attributes["outcome"] = "DENIED"
    with open_store(db_path, tick_sample_rate=0.0) as store:
        store.ingest([root])
        store.flush()  # decided: a plain trace, sampled out
        assert store.trace(tid(1)) == []
        assert store.stats().sampled_out_spans == 1
        store.ingest([decide])
        store.flush()
        # The span dropped before is written too: the kept trace is whole.
        assert [s.name for s in store.trace(tid(1))] == ["process market.ticks", "decide"]
        stats = store.stats()
        assert (stats.sampled_out_spans, stats.rescued_spans) == (0, 1)


def test_beyond_the_rescue_budget_a_late_important_span_is_kept_alone(db_path: Path) -> None:
    root, decide = tick(1)
    decide.attributes["outcome"] = "DENIED"
    with open_store(db_path, tick_sample_rate=0.0, rescue_spans=2) as store:
        store.ingest([root])
        store.flush()
        for n in range(2, 5):  # later sampled-out ticks push the first one out of the budget
            store.ingest(tick(n))
            store.flush()
        store.ingest([decide])
        store.flush()
        assert [s.name for s in store.trace(tid(1))] == ["decide"]
        assert store.stats().rescued_spans == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_trade_whose_order_spans_come_in_a_later_batch_is_kept_whole(db_path: Path) -> None:
    """The tick's spans are exported first, the order's seconds later (another process's
    batch): the trace is held past the first batch, so the tick's send span is kept."""
    clock = FakeClock()
    send = span(1, "send market.ticks", service="eventbus-bridge", kind="producer")
    *rest, submit = trade(1, "c-1")
    rest[0].parent_span_id = send.span_id
    with SqliteSpanStore(db_path, tick_sample_rate=0.0, clock=clock) as store:  # default hold
        store.ingest([send])
        store.flush(decide=False)
        clock.now += 4.0  # twice the hold this store had before (2 s)
        store.flush(decide=False)
        assert store.trace(tid(1)) == []  # still held, not decided
        store.ingest(rest)
        store.flush(decide=False)
        clock.now += 1.5
        store.flush(decide=False)
        store.ingest([submit])
        store.flush()
        names = [s.name for s in store.trace(tid(1))]
        assert sorted(names) == sorted(["send market.ticks", *(s.name for s in [*rest, submit])])
        stats = store.stats()
        assert (stats.sampled_out_spans, stats.rescued_spans) == (0, 0)


def test_a_plain_trace_is_decided_when_its_hold_ends(db_path: Path) -> None:
    clock = FakeClock()
    with open_store(db_path, hold_s=12.0, tick_sample_rate=0.0, clock=clock) as store:
        store.ingest(tick(1))
        store.flush(decide=False)
        clock.now += 11.0
        store.flush(decide=False)
        assert store.stats().sampled_out_spans == 0  # held
        clock.now += 2.0
        store.flush(decide=False)
        assert store.stats().sampled_out_spans == 2


def test_held_spans_are_bounded_and_early_decisions_counted(db_path: Path) -> None:
    clock = FakeClock()
    with open_store(
        db_path, hold_s=60.0, max_held_spans=10, tick_sample_rate=1.0, clock=clock
    ) as store:
        for n in range(1, 11):  # 20 spans held: the oldest traces are decided early
            store.ingest(tick(n))
        store.flush(decide=False)
        stats = store.stats()
        assert stats.early_decided_traces == 5
        assert all(store.trace(tid(n)) for n in range(1, 6))
        assert not any(store.trace(tid(n)) for n in range(6, 11))


def test_a_full_queue_drops_and_counts_without_blocking(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(db_path, queue_spans=100)
    disk = threading.Event()  # a disk that does not answer until the test says so
    write = store._write

    def stuck_write(*args: Any, **kwargs: Any) -> None:
        disk.wait()
        write(*args, **kwargs)

    monkeypatch.setattr(store, "_write", stuck_write)
    try:
        # The writer is stuck on the first batch: had ingest waited for it, this would hang.
        refused = [store.ingest(tick(n) * 30) for n in range(1, 200)]  # 60 spans each
        assert refused[0] == 0
        assert set(refused[1:]) == {60}
        disk.set()
        store.flush()
        stats = store.stats()
        assert stats.dropped_spans == 198 * 60
        assert stats.received_spans == 60
        assert store.ingest(tick(500)) == 0  # room again once the writer caught up
    finally:
        disk.set()
        store.close()


def test_retention_by_age_evicts_and_counts(db_path: Path) -> None:
    old = time.time_ns() - 3600 * 10**9
    with open_store(db_path, max_age_s=600) as store:
        store.ingest(trade(1, "c-old", base_ns=old))
        store.ingest(trade(2, "c-new"))
        store.ingest_logs([LogRecord(old, "INFO", "ancient", "x", tid(1), "00" * 8)])
        store.flush()
        assert store.trace(tid(1)) == []
        assert len(store.trace(tid(2))) == 4
        assert store.search(SearchQuery(business_key="c-old")) == []
        stats = store.stats()
        assert (stats.spans, stats.traces, stats.evicted_spans) == (4, 1, 4)
        assert store.logs_for_span(tid(1), "00" * 8) == []


def test_retention_by_size_evicts_the_oldest_plain_traces_first(db_path: Path) -> None:
    base = time.time_ns()
    with open_store(db_path, max_bytes=2_000_000) as store:
        for n in range(1, 301):
            store.ingest(trade(n, f"c-{n}", base_ns=base + n * MS))
        store.flush()
        for n in range(1001, 4001):
            store.ingest(
                [span(n, "tick", base_ns=base + n * MS, padding="x" * 400, symbol="ETHUSDT")]
            )
            if n % 500 == 0:
                store.flush()
        store.flush()
        stats = store.stats()
        assert stats.evicted_spans > 0
        assert store._used_bytes() <= 2_000_000
        # Important traces outlive plain ones; the newest plain ones are the ones still here.
        assert all(store.trace(tid(n)) for n in range(1, 301))
        assert store.trace(tid(1001)) == []
        assert store.trace(tid(4000))
        assert stats.spans == 1200 + sum(1 for n in range(1001, 4001) if store.trace(tid(n)))


def test_logs_are_read_back_per_span(db_path: Path) -> None:
    spans = trade(1, "c-1")
    record = LogRecord(
        time.time_ns(), "WARN", "order denied", "risk-safety", tid(1), spans[2].span_id, {"n": 1}
    )
    with open_store(db_path) as store:
        store.ingest(spans)
        store.ingest_logs([record])
        store.flush()
        assert store.logs_for_span(tid(1), spans[2].span_id) == [record]
        assert store.logs_for_span(tid(1), spans[1].span_id) == []


def test_otlp_log_records_keep_their_attributes_until_read(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record sent over OTLP (the services' own encoder) reads back with its body, severity,
    service, ids and attributes; its attributes are stored as the record came, not as JSON,
    and a damaged one reads back without them rather than failing the page."""
    from backend.infra.observability._signals import encode_logs

    spans = trade(1, "c-1")
    fields = {
        "message": "order filled",
        "logger": "execution.desk",
        "trace_id": tid(1),
        "span_id": spans[3].span_id,
        "trace_flags": "01",
        "client_order_id": "c-1",
        "quantity": "0.1",
        "reduce_only": False,
        "fills": 2,
    }
    now = time.time_ns()
    payload = encode_logs([(now, 20, "INFO", fields)], {"service.name": "execution"}, ("qt", "1"))
    with open_store(db_path) as store:
        store.ingest(spans)
        assert store.ingest_otlp_logs(payload) == (1, 0)
        store.flush()
        (record,) = store.logs_for_span(tid(1), spans[3].span_id)
        assert (record.time_ns, record.severity, record.body, record.service) == (
            now,
            "INFO",
            "order filled",
            "execution",
        )
        assert record.attributes == {
            "logger": "execution.desk",
            "client_order_id": "c-1",
            "quantity": "0.1",
            "reduce_only": False,
            "fills": 2,
        }
        (stored,) = store._reader().execute("SELECT attrs FROM logs").fetchone()
        assert isinstance(stored, bytes)
        store._db.execute("UPDATE logs SET attrs = x'ff00'")
        store._db.commit()
        (damaged,) = store.logs_for_span(tid(1), spans[3].span_id)
        assert damaged.attributes == {} and damaged.body == "order filled"
        assert "could not be read" in caplog.text


def test_stage_quantiles_count_every_span_even_sampled_out(db_path: Path) -> None:
    base = time.time_ns()
    with open_store(db_path, tick_sample_rate=0.0) as store:
        for n in range(1, 1001):
            store.ingest([span(n, "decide", base_ns=base, duration_ms=n / 10)])
        store.flush()
        assert store.stats().spans == 0
        got = store.stage_quantiles(base - 60 * 10**9, base + 60 * 10**9)
        stage = got["trading-bot: decide"]
        assert stage.count == 1000
        assert stage.quantiles_ms[0.5] == pytest.approx(50.0, rel=0.02)
        assert stage.quantiles_ms[0.99] == pytest.approx(99.0, rel=0.02)


def test_stage_durations_and_spans_between_read_stored_spans(db_path: Path) -> None:
    base = time.time_ns()
    with open_store(db_path) as store:
        store.ingest(trade(1, "c-1", base_ns=base))
        store.flush()
        durations = store.stage_durations(base - MS, base + MS)
        assert durations["execution: order.submit"] == [1.0]
        assert len(store.spans_between(base - MS, base + MS, 10)) == 4
        assert len(store.spans_between(base - MS, base + MS, 2)) == 2
        assert store.spans_between(base + MS, base + 2 * MS, 10) == []


def test_requests_that_come_within_the_commit_interval_are_written_in_one_transaction(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit writes every page it touched into the write-ahead log again, so the writer
    gathers what comes within `commit_interval_s` of its last commit; what it gathers is still
    written without anyone asking (no flush)."""
    store = open_store(db_path, commit_interval_s=0.5)
    batches: list[int] = []
    write = store._write

    def counting(spans: Any, logs: Any, **kw: Any) -> None:
        if spans:
            batches.append(len(spans))
        write(spans, logs, **kw)

    monkeypatch.setattr(store, "_write", counting)
    try:
        store.flush()
        for n in range(1, 6):
            store.ingest(trade(n, f"c-{n}"))
            time.sleep(0.02)
        deadline = time.monotonic() + 5
        while sum(batches) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(batches) == 20
        assert len(batches) <= 2, batches
        assert all(len(store.trace(tid(n))) == 4 for n in range(1, 6))
    finally:
        store.close()


def test_bad_settings_are_refused_by_name(db_path: Path) -> None:
    with pytest.raises(ValueError, match="tick_sample_rate"):
        SqliteSpanStore(db_path, tick_sample_rate=2)
    with pytest.raises(ValueError, match="max_bytes"):
        SqliteSpanStore(db_path, max_bytes=0)
    with pytest.raises(ValueError, match="commit_interval_s"):
        SqliteSpanStore(db_path, commit_interval_s=-1)


def test_a_batch_that_fails_is_counted_and_the_writer_carries_on(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(db_path)
    write_spans = store._write_spans
    failures = iter([OSError("disk I/O error")])

    def failing_once(spans: Any) -> None:
        write_spans(spans)  # names and traces go into the transaction, then it fails
        failure = next(failures, None)
        if failure is not None:
            raise failure

    monkeypatch.setattr(store, "_write_spans", failing_once)
    try:
        store.ingest([span(1, "fill", service="new-service", brand_new_key="x")])
        store.flush()
        assert store.trace(tid(1)) == []
        assert store.stats().dropped_spans == 1
        assert "could not write a batch of 1 spans" in caplog.text
        store.ingest([span(2, "fill", service="new-service", brand_new_key="y")])
        store.flush()
        (again,) = store.trace(tid(2))
        assert (again.service, again.attributes) == ("new-service", {"brand_new_key": "y"})
        assert store.stats().spans == 1
    finally:
        store.close()
