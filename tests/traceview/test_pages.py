"""Every page and JSON route of the viewer over a seeded store (HTML read as text; the browser
tests under tests/browser run the same pages in Chromium)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backend.infra.traceview import create_app
from backend.infra.traceview._sqlstore import SqliteSpanStore
from backend.infra.traceview._store import StoredSpan
from tests.traceview import seed
from tests.traceview.listqueries import ListQueries


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    spans, logs = seed.seeded(time.time_ns())
    with TestClient(create_app(ListQueries(spans, logs), ingest_routes=[])) as c:
        yield c


def test_search_hides_noise_and_filters_by_service_duration_and_business_key(
    client: TestClient,
) -> None:
    page = client.get("/").text
    assert seed.FAST in page and seed.SLOW in page
    assert seed.NOISE not in page  # a health check is not in the default list
    assert seed.NOISE in client.get("/", params={"noise": "1"}).text
    slow = client.get("/", params={"service": "risk-safety", "min_ms": "20"}).text
    assert seed.SLOW in slow and seed.FAST not in slow
    by_key = client.get("/", params={"key": seed.FAST_ORDER}).text
    assert seed.FAST in by_key and seed.FILL in by_key and seed.SLOW not in by_key
    assert "highlight=" in by_key  # the match is carried into the trace
    by_attr = client.get("/", params={"attr": "reason=LOW_CONFIDENCE"}).text
    assert seed.LOW in by_attr and seed.FAST not in by_attr


def test_bad_search_input_is_a_clear_400(client: TestClient) -> None:
    answer = client.get("/", params={"min_ms": "fast"})
    assert answer.status_code == 400 and "min_ms=&#x27;fast&#x27;" in answer.text
    api = client.get("/api/traces", params={"attr": "novalue"})
    assert api.status_code == 400 and "expected key=value" in api.json()["error"]
    assert client.get("/stages", params={"window": "soon"}).status_code == 400


def test_waterfall_marks_the_critical_path_links_logs_and_highlighted_matches(
    client: TestClient,
) -> None:
    page = client.get(f"/trace/{seed.FAST}", params={"highlight": seed.SUBMIT_SPAN}).text
    assert f"id='span-{seed.SUBMIT_SPAN}'" in page
    assert "class='row crit match'" in page  # order.submit is on the critical path, matched
    assert "critical path" in page and "class='cp wait'" in page  # the stream wait
    # The fill of another trace links here, and the link goes back to it.
    assert "linked from ←" in page and f"/trace/{seed.FILL}#span-" in page
    assert "order placed" in page  # the log line carrying the span id
    assert f"/order/{seed.FAST_ORDER}" in page
    assert client.get("/trace/" + "0" * 32).status_code == 404


def test_a_search_carries_its_key_and_attributes_into_the_trace_it_found(
    client: TestClient,
) -> None:
    found = client.get("/", params={"key": seed.FAST_ORDER, "attr": "approved=True"}).text
    assert f"/trace/{seed.FAST}?highlight=" in found and "key=qt-fast-0001" in found
    # The five spans carrying the client order id are highlighted, and no other.
    page = client.get(f"/trace/{seed.FAST}", params={"key": seed.FAST_ORDER}).text
    assert page.count(" match'") == 5 and "5 search match(es)" in page
    page = client.get(f"/trace/{seed.FAST}", params={"attr": "reason=OK approved=True"}).text
    assert page.count(" match'") == 1 and "id='span-a00000000000000d'" in page


def test_trace_statistics_list_self_time_by_service_and_operation(client: TestClient) -> None:
    page = client.get(f"/trace/{seed.SLOW}/stats").text
    assert "<td>risk-safety</td><td>INSERT risk_decisions</td><td class='num'>1</td>" in page
    assert "Self time by service" in page


def test_order_page_joins_the_linked_traces_on_one_timeline(client: TestClient) -> None:
    page = client.get(f"/order/{seed.FAST_ORDER}").text
    assert "<span id='service-count'>7</span> services" in page
    assert "<span id='trace-count'>2</span> linked traces" in page
    assert "<b id='states'>ACCEPTED → FILLED</b>" in page
    assert "BUY 0.01 @ 40000" in page
    # The fill's link to the order span is drawn on the page (both traces are on it).
    assert f"data-links='{seed.SUBMIT_SPAN}'" in page
    assert client.get("/order/nope").status_code == 404
    api = client.get(f"/api/order/{seed.FAST_ORDER}").json()
    assert api["states"] == ["ACCEPTED", "FILLED"] and sorted(api["traces"]) == [
        seed.FAST,
        seed.FILL,
    ]


def test_compare_shows_the_stage_that_got_slower_and_the_differing_attributes(
    client: TestClient,
) -> None:
    page = client.get("/compare", params={"a": seed.FAST, "b": seed.SLOW}).text
    # SQL took 24 ms longer; every stage around it by as much; the rest did not move.
    rows = {r.split("</td>")[0]: r for r in page.split("<tr class='stage'><td>")[1:]}
    assert "+24.000" in rows["risk-safety: INSERT risk_decisions"]
    assert "+0.000" in rows["execution: order.submit"]
    assert "+0.000" in rows["ai-engine: signal"]
    attributes = page.split("<table id='attributes'>")[1]
    assert (
        "<td>risk-safety: risk.check</td><td><code>quote_age_ms</code></td><td>12</td>"
        "<td>950</td>" in attributes
    )
    assert "client_order_id" not in attributes  # ids always differ; they are not news
    assert client.get("/compare", params={"a": seed.FAST, "b": "0" * 32}).status_code == 404


def test_stages_table_links_each_quantile_to_an_example_trace(client: TestClient) -> None:
    page = client.get("/stages", params={"window": "5m"}).text
    assert "tick → order accepted" in page
    row = page.split("data-stage='risk-safety: POST /check'>")[1].split("</tr>")[0]
    assert f"/trace/{seed.SLOW}" in row  # p99 of SQL is the slow trade
    received = page.split("<table id='received'>")[1]
    assert "<td>risk-safety: INSERT risk_decisions</td><td class='num'>2</td>" in received
    api = client.get("/api/stages", params={"window": "5m"}).json()["data"]
    stage = next(b for b in api if b["stage"] == "trading-bot: process market.tick")
    assert stage["count"] == 4 and stage["wait"]["0.5"]["value_ms"] > 0


def test_decisions_page_lists_every_decision_and_the_funnel(client: TestClient) -> None:
    page = client.get("/decisions", params={"window": "5m"}).text
    for reason in ("APPROVED", "LOW_CONFIDENCE", "STALE_TICK"):
        assert reason in page
    funnel = page.split("<tr class='funnel'>")
    btc = next(r for r in funnel if r.startswith("<td>BTCUSDT</td>"))
    # 2 signals, both approved, one filled (the fast trade's resting order).
    assert "<td class='num'>2</td><td class='num'>2</td><td class='num'>1</td>" in btc
    assert "4 decisions made in the window (counted before sampling), 4 kept" in page
    found = client.get("/api/decisions", params={"window": "5m", "q": "stale"}).json()["data"]
    assert [d["reason"] for d in found] == ["STALE_TICK"]


def test_service_map_has_http_stream_and_sql_edges_with_rates(client: TestClient) -> None:
    edges = client.get("/api/map", params={"window": "5m"}).json()["data"]
    pairs = {(e["caller"], e["callee"], e["kind"]) for e in edges}
    assert ("trading-bot", "risk-safety", "http") in pairs
    assert ("eventbus-bridge", "trading-bot", "stream") in pairs
    assert ("execution", "portfolio-intelligence", "stream") in pairs
    assert ("risk-safety", "sqlite (SQL)", "sql") in pairs
    page = client.get("/map", params={"window": "5m"}).text
    assert "<svg id='map'" in page and "class='edge'" in page


def test_json_api_searches_and_returns_a_trace_with_its_critical_path(client: TestClient) -> None:
    found = client.get("/api/traces", params={"key": seed.SLOW_ORDER}).json()["data"]
    assert [t["trace_id"] for t in found] == [seed.SLOW]
    spans = client.get(f"/api/traces/{seed.SLOW}").json()["data"]
    assert any(s["critical"] for s in spans) and len(spans) == 19
    assert client.get("/static/viewer.js").status_code == 200


def test_a_span_event_is_shown_with_its_time() -> None:
    start = 1_700_000_000_000_000_000
    submit = StoredSpan(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_span_id="",
        name="order.submit",
        kind="internal",
        service="execution",
        start_ns=start,
        end_ns=start + 3_000_000,
        attributes={"order.client_order_id": "c-9"},
        error=False,
        events=[("accepted", {"venue": "paper"})],
        event_times_ns=[start + 1_500_000],
    )
    with TestClient(create_app(ListQueries([submit]), ingest_routes=[])) as c:
        page = c.get(f"/trace/{'ab' * 16}").text
    at = time.strftime("%H:%M:%S", time.localtime(start / 1e9))
    assert f"at {at}.001 (+1.500 ms)" in page


def test_an_entry_order_page_reaches_the_exit_that_closed_its_position(tmp_path: Path) -> None:
    """position-monitor's exit carries `entry.client_order_id` and links to the booking of the
    entry's fill: the entry's page shows the exit, and the exit's page reaches the entry."""
    base = time.time_ns()

    def make(trace: str, span: str, name: str, service: str, at_ms: float, **attrs: Any) -> Any:
        start = base + int(at_ms * 1e6)
        return StoredSpan(
            trace_id=trace * 32,
            span_id=span * 16,
            parent_span_id="",
            name=name,
            kind="internal",
            service=service,
            start_ns=start,
            end_ns=start + 1_000_000,
            attributes=attrs,
            error=False,
        )

    entry = make("a", "1", "order.submit", "execution", 0, **{"order.client_order_id": "qt-1"})
    # portfolio-intelligence books the entry's fill and publishes `position.updated`; the
    # exit links to that span (the event's traceparent).
    booking = make("b", "2", "process execution.fills", "portfolio-intelligence", 5, order_id="o-1")
    booking.links = [("a" * 32, "1" * 16)]
    stop = make(
        "c",
        "3",
        "stop.trigger",
        "position-monitor",
        90,
        client_order_id="pm-BTCUSDT-7-SL",
        reason="STOP_LOSS",
        **{"entry.client_order_id": "qt-1"},
    )
    stop.links = [("b" * 32, "2" * 16)]
    exit_submit = make(
        "c", "4", "order.submit", "execution", 91, **{"order.client_order_id": "pm-BTCUSDT-7-SL"}
    )
    exit_submit.parent_span_id = stop.span_id
    with SqliteSpanStore(tmp_path / "spans.sqlite", hold_s=0.0) as store:
        store.ingest([entry, booking, stop, exit_submit])
        store.flush()
        with TestClient(create_app(store, ingest_routes=[])) as c:
            page = c.get("/order/qt-1").text
            assert "Closed by the exit order" in page and "/order/pm-BTCUSDT-7-SL" in page
            assert "stop.trigger STOP_LOSS by pm-BTCUSDT-7-SL" in page
            assert "c" * 32 in page
            back = c.get("/order/pm-BTCUSDT-7-SL").text
            assert "a" * 32 in back  # the entry's trace, through the links
