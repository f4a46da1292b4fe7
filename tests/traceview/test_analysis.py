"""The viewer's analyses over hand-built traces whose answers are worked out by hand."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from backend.infra.traceview._analysis import (
    TICK_TO_TRADE,
    compare,
    critical_path,
    decisions,
    funnel,
    match_decision,
    order_states,
    order_timeline,
    quantiles,
    self_time_by_service,
    self_times,
    service_map,
    stage_breakdown,
    tree_order,
)
from backend.infra.traceview._store import StoredSpan

MS = 1_000_000


def span(
    span_id: str,
    parent: str,
    service: str,
    name: str,
    start_ms: float,
    end_ms: float,
    kind: str = "internal",
    trace: str = "t1",
    links: list[tuple[str, str]] | None = None,
    error: bool = False,
    **attributes: Any,
) -> StoredSpan:
    return StoredSpan(
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,
        service=service,
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        attributes=dict(attributes),
        error=error,
        links=links or [],
    )


def trade(trace: str = "t1", scale: float = 1.0, sql_ms: float = 2.0) -> list[StoredSpan]:
    """A tick's trace: the bridge produces, the bot consumes 3 ms later, calls risk-safety
    (which runs SQL) and execution (which fills)."""
    s = scale
    return [
        span("p", "", "eventbus-bridge", "send market.tick", 0, 1, "producer", trace),
        span("c", "p", "trading-bot", "process market.tick", 4, 4 + 30 * s, "consumer", trace),
        span("d", "c", "trading-bot", "decide", 5, 3 + 30 * s, trace=trace, symbol="BTCUSDT"),
        span("rc", "d", "trading-bot", "POST /check", 6, 6 + 10 * s, "client", trace),
        span("rs", "rc", "risk-safety", "POST /check", 7, 5 + 10 * s, "server", trace),
        span("q", "rs", "risk-safety", "SELECT", 8, 8 + sql_ms, "client", trace,
             **{"db.system.name": "sqlite"}),
        span("ec", "d", "trading-bot", "POST /orders", 17 * s, 17 * s + 10, "client", trace),
        span("es", "ec", "execution", "POST /orders", 17 * s + 1, 17 * s + 9, "server", trace),
        span("os", "es", "execution", "order.submit", 17 * s + 2, 17 * s + 8, trace=trace,
             client_order_id="qt-1", **{"order.status": "FILLED"}),
    ]  # fmt: skip


def test_tree_order_puts_children_after_their_parent_by_start() -> None:
    order = [(s.span_id, depth) for s, depth in tree_order(trade())]
    assert order == [
        ("p", 0), ("c", 1), ("d", 2), ("rc", 3), ("rs", 4), ("q", 5),
        ("ec", 3), ("es", 4), ("os", 5),
    ]  # fmt: skip


def test_critical_path_follows_the_last_finishing_child_and_shows_the_stream_wait() -> None:
    path = critical_path(trade())
    # Contiguous from the tick to the end of the consumer, nothing counted twice.
    assert path[0].start_ns == 0 and path[-1].end_ns == 34 * MS
    for before, after in itertools.pairwise(path):
        assert before.end_ns == after.start_ns
    spans_on = [(g.span_id, g.kind, g.start_ns // MS, g.end_ns // MS) for g in path]
    assert ("p", "work", 0, 1) in spans_on
    # The producer had finished; the tick waited in the stream from 1 to 4.
    assert ("p", "wait", 1, 4) in spans_on
    assert ("q", "work", 8, 10) in spans_on
    # execution's order.submit is on the path, the sequential risk call before it too.
    assert {"rs", "os", "es", "ec", "rc"} <= {g.span_id for g in path}


def test_critical_path_skips_a_child_that_overlaps_one_finishing_later() -> None:
    spans = [
        span("r", "", "a", "root", 0, 100),
        span("x", "r", "a", "slow", 10, 90),
        span("y", "r", "b", "parallel", 20, 60),  # hidden behind x entirely
    ]
    path = [(g.span_id, g.start_ns // MS, g.end_ns // MS) for g in critical_path(spans)]
    assert path == [("r", 0, 10), ("x", 10, 90), ("r", 90, 100)]


def test_other_consumers_of_a_message_are_not_on_the_path_of_the_one_that_took_longest() -> None:
    spans = [
        span("p", "", "eventbus-bridge", "send market.tick", 0, 5, "producer"),
        span("a", "p", "risk-safety", "process market.tick", 1, 2, "consumer"),
        span("m", "p", "position-monitor", "process market.tick", 2, 4, "consumer"),
        span("b", "p", "trading-bot", "process market.tick", 6, 20, "consumer"),
    ]
    path = [(g.span_id, g.kind, g.start_ns // MS, g.end_ns // MS) for g in critical_path(spans)]
    assert path == [("p", "work", 0, 5), ("p", "wait", 5, 6), ("b", "work", 6, 20)]


def test_critical_path_of_a_span_linked_inside_its_own_trace_hangs_under_the_link() -> None:
    spans = [
        span("r", "", "a", "root", 0, 10),
        span("l", "", "b", "fan-in", 20, 50, links=[("t1", "r")]),
    ]
    path = [(g.span_id, g.kind) for g in critical_path(spans)]
    assert path == [("r", "work"), ("r", "wait"), ("l", "work")]


def test_self_time_subtracts_the_children_union_per_service_and_operation() -> None:
    rows = {(r.service, r.operation): r for r in self_times(trade())}
    # risk-safety's server: 7..15 = 8 ms, SQL 8..10 inside: 6 ms of its own.
    assert rows[("risk-safety", "POST /check")].self_ms == pytest.approx(6.0)
    assert rows[("risk-safety", "SELECT")].self_ms == pytest.approx(2.0)
    # decide 5..33 minus its two calls (6..16 and 17..27): 8 ms.
    assert rows[("trading-bot", "decide")].self_ms == pytest.approx(8.0)
    assert sum(r.self_share for r in rows.values()) == pytest.approx(1.0)
    by_service = self_time_by_service(trade())
    assert by_service["risk-safety"] == pytest.approx(8.0)


def test_compare_matches_stages_and_reports_latency_and_attribute_differences() -> None:
    fast = trade("fast")
    slow = trade("slow", sql_ms=5.0)
    slow[5].attributes["db.rows"] = 400
    result = compare(fast, slow)
    by_stage = {d.stage: d for d in result.stages}
    assert by_stage["risk-safety: SELECT"].diff_ms == pytest.approx(3.0)
    assert by_stage["risk-safety: POST /check"].diff_ms == pytest.approx(0.0)
    assert result.stages[0].stage == "risk-safety: SELECT"  # largest difference first
    assert [(a.stage, a.key, a.value_a, a.value_b) for a in result.attributes] == [
        ("risk-safety: SELECT", "db.rows", None, 400)
    ]
    lonely = compare(fast, [*slow, span("z", "c", "trading-bot", "extra", 5, 6, trace="slow")])
    extra = {d.stage: d for d in lonely.stages}["trading-bot: extra"]
    assert (extra.count_a, extra.count_b, extra.ms_b) == (0, 1, 1.0)


def test_quantiles_are_nearest_rank_with_an_example_trace() -> None:
    samples = [(float(i), f"t{i}") for i in range(1, 1001)]
    q = quantiles(samples)
    assert (q[0.5].value_ms, q[0.5].trace_id) == (500.0, "t500")
    assert (q[0.99].value_ms, q[0.99].trace_id) == (990.0, "t990")
    assert (q[0.999].value_ms, q[0.999].trace_id) == (999.0, "t999")
    assert quantiles([]) == {}


def test_stage_breakdown_splits_stream_wait_service_and_sql() -> None:
    spans = trade("a") + trade("b", sql_ms=4.0)
    stages = {b.stage: b for b in stage_breakdown(spans)}
    consumer = stages["trading-bot: process market.tick"]
    assert consumer.count == 2
    assert consumer.wait[0.5].value_ms == pytest.approx(3.0)  # 4 - 1
    risk = stages["risk-safety: POST /check"]
    assert risk.sql[0.5].value_ms == pytest.approx(2.0)
    assert (risk.sql[0.99].value_ms, risk.sql[0.99].trace_id) == (pytest.approx(4.0), "b")
    assert risk.service[0.5].value_ms == pytest.approx(4.0)  # 8 ms minus 4 of SQL
    assert risk.wait == {}
    # The bot's own time excludes its calls to risk-safety and execution.
    assert consumer.service[0.5].value_ms == pytest.approx(10.0)
    # Tick (0) to execution's order.submit end (25): the headline row comes first.
    assert stage_breakdown(spans)[0].stage == TICK_TO_TRADE
    assert stages[TICK_TO_TRADE].total[0.5].value_ms == pytest.approx(25.0)


def test_a_consumer_linked_to_its_producer_in_another_trace_counts_its_wait() -> None:
    spans = [
        span("p", "", "execution", "send order.filled", 0, 1, "producer", "t1"),
        span("c", "", "portfolio-intelligence", "process order.filled", 6, 9, "consumer", "t2",
             links=[("t1", "p")]),
    ]  # fmt: skip
    stages = {b.stage: b for b in stage_breakdown(spans)}
    assert stages["portfolio-intelligence: process order.filled"].wait[0.5].value_ms == 5.0
    edges = service_map(spans, window_s=10)
    assert [(e.caller, e.callee, e.kind, e.requests) for e in edges] == [
        ("execution", "portfolio-intelligence", "stream", 1)
    ]


def order_traces() -> list[StoredSpan]:
    """A resting limit order: placed in trace o, filled later in trace f (linked), booked."""
    return [
        span("d", "", "trading-bot", "decide", 0, 10, trace="o", client_order_id="qt-9",
             outcome="ORDERED", reason="APPROVED", symbol="ETHUSDT"),
        span("rk", "d", "risk-safety", "risk.check", 1, 2, trace="o", client_order_id="qt-9",
             approved=True, reason="OK", trading_state="ACTIVE"),
        span("s", "d", "execution", "order.submit", 3, 4, trace="o", client_order_id="qt-9",
             **{"order.status": "ACCEPTED"}),
        span("f1", "", "execution", "order.fill", 50, 51, trace="f", client_order_id="qt-9",
             links=[("o", "s")], side="BUY", quantity="0.5", price="2000", fee="1",
             liquidity="MAKER", leaves_quantity="0.5", resting=True),
        span("f2", "", "execution", "order.fill", 60, 61, trace="g", client_order_id="qt-9",
             links=[("o", "s")], side="BUY", quantity="0.5", price="2001", fee="1",
             liquidity="MAKER", leaves_quantity="0", resting=True),
        span("b", "f2", "portfolio-intelligence", "position.update", 62, 63, trace="g",
             client_order_id="qt-9", **{"position.quantity": "1.0"}),
        span("x", "", "execution", "order.submit", 5, 6, trace="o", client_order_id="other",
             **{"order.status": "FILLED"}),
    ]  # fmt: skip


def test_order_timeline_follows_the_order_across_traces_with_states_and_fills() -> None:
    timeline = order_timeline(order_traces(), "qt-9")
    assert [(e.what, e.trace_id) for e in timeline] == [
        ("risk", "o"),
        ("state", "o"),
        ("decision", "o"),
        ("fill", "f"),
        ("fill", "g"),
        ("booking", "g"),
    ]
    assert timeline[3].text.startswith("BUY 0.5 @ 2000")
    assert order_states(timeline) == ["ACCEPTED", "PARTIALLY_FILLED", "FILLED"]


def decision_spans() -> list[StoredSpan]:
    return [
        span("d1", "", "trading-bot", "decide", 0, 5, trace="a", symbol="BTCUSDT",
             outcome="ORDERED", reason="APPROVED", model_version="m1", direction="BUY",
             confidence=0.8, client_order_id="qt-a"),
        span("r1", "d1", "trading-bot", "risk_check", 1, 2, trace="a", approved=True,
             symbol="BTCUSDT"),
        span("f1", "", "execution", "order.fill", 3, 4, trace="a", client_order_id="qt-a"),
        span("d2", "", "trading-bot", "decide", 10, 12, trace="b", symbol="BTCUSDT",
             outcome="SKIPPED", reason="LOW_CONFIDENCE", detail="0.1000", model_version="m1",
             direction="SELL", confidence=0.1),
        span("d3", "", "trading-bot", "decide", 20, 22, trace="c", symbol="BTCUSDT",
             outcome="DENIED", reason="MAX_EXPOSURE", model_version="m1", direction="BUY",
             confidence=0.9, client_order_id="qt-c"),
        span("s3", "d3", "trading-bot", "sizing", 20, 21, trace="c", equity="10000",
             constraint="CONFIDENCE"),
        span("d4", "", "trading-bot", "decide", 30, 31, trace="d", symbol="ETHUSDT",
             outcome="SKIPPED", reason="STALE_TICK", detail="tick is 9000 ms old"),
    ]  # fmt: skip


def test_every_decide_span_is_one_decision_with_its_reason_and_inputs() -> None:
    found = decisions(decision_spans())
    assert [(d.trace_id, d.outcome, d.reason) for d in found] == [
        ("d", "SKIPPED", "STALE_TICK"),
        ("c", "DENIED", "MAX_EXPOSURE"),
        ("b", "SKIPPED", "LOW_CONFIDENCE"),
        ("a", "ORDERED", "APPROVED"),
    ]
    denied = found[1]
    assert denied.inputs == {"sizing.equity": "10000", "sizing.constraint": "CONFIDENCE"}
    assert denied.confidence == 0.9
    assert [d.trace_id for d in found if match_decision(d, "btcusdt skipped")] == ["b"]
    assert [d.trace_id for d in found if match_decision(d, "constraint=confidence")] == ["c"]


def test_funnel_counts_signals_approved_and_filled_per_symbol_and_model() -> None:
    spans = decision_spans()
    rows = {(r.symbol, r.model_version): r for r in funnel(decisions(spans), spans)}
    btc = rows[("BTCUSDT", "m1")]
    assert (btc.signals, btc.approved, btc.filled) == (3, 1, 1)
    assert btc.skipped_by_reason == {"SKIPPED LOW_CONFIDENCE": 1, "DENIED MAX_EXPOSURE": 1}
    eth = rows[("ETHUSDT", "")]
    assert (eth.signals, eth.approved, eth.filled) == (1, 0, 0)


def test_service_map_counts_http_stream_and_sql_edges_with_error_rates() -> None:
    spans = trade("a") + trade("b")
    spans.append(span("rc2", "d", "trading-bot", "POST /check", 6, 7, "client", "b"))
    spans.append(span("rs2", "rc2", "risk-safety", "POST /check", 6, 7, "server", "b",
                      error=True))  # fmt: skip
    edges = {(e.caller, e.callee): e for e in service_map(spans, window_s=2.0)}
    assert set(edges) == {
        ("eventbus-bridge", "trading-bot"),
        ("trading-bot", "risk-safety"),
        ("trading-bot", "execution"),
        ("risk-safety", "sqlite (SQL)"),
    }
    risk = edges[("trading-bot", "risk-safety")]
    assert (risk.kind, risk.requests, risk.errors) == ("http", 3, 1)
    assert risk.rate_per_s == pytest.approx(1.5)
    assert risk.error_rate == pytest.approx(1 / 3)
    assert edges[("eventbus-bridge", "trading-bot")].kind == "stream"


def test_an_http_client_span_named_by_its_method_is_told_apart_by_its_path() -> None:
    spans = [
        span("r", "", "trading-bot", "decide", 0, 10),
        span("a", "r", "trading-bot", "POST", 1, 3, "client", **{"url.full": "http://h:1/check"}),
        span("b", "r", "trading-bot", "POST", 4, 9, "client", **{"url.full": "http://h:2/orders"}),
    ]
    assert {(r.operation, r.count) for r in self_times(spans)} == {
        ("decide", 1),
        ("POST /check", 1),
        ("POST /orders", 1),
    }
    moved = [*spans[:2], span("b", "r", "trading-bot", "POST", 4, 5, "client",
                              **{"url.full": "http://h:3/orders"})]  # fmt: skip
    result = compare(spans, moved)
    assert {d.stage: d.diff_ms for d in result.stages}["trading-bot: POST /orders"] == -4.0
    assert result.attributes == []  # only the port differed
