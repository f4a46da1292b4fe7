"""Every page of the viewer in headless Chromium over a seeded store: what a user sees and can
do (search, follow a match into the trace, find, collapse, deep links, links both ways,
compare, follow a quantile to its trace, search decisions)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quantum_trader.dashboard import create_viewer
from tests.browser.shots import shot
from tests.support.procs import free_port
from tests.traceview import seed
from tests.traceview.listqueries import ListQueries
from tests.traceview.served import ServedApp


@pytest.fixture(scope="module")
def viewer() -> Iterator[str]:
    spans, logs = seed.seeded(time.time_ns())
    # Nothing listens on these: the dashboard must say so, not fail.
    down = {name: f"http://127.0.0.1:{free_port()}" for name in ("risk-safety", "execution")}
    app = create_viewer(ListQueries(spans, logs), ingest_routes=[], urls=down)
    with ServedApp(app) as served:
        yield served.url


def test_search_form_finds_by_business_key_and_highlights_the_match(
    page: Any, viewer: str, artifacts: Path
) -> None:
    page.goto(viewer + "/")
    assert page.locator("#results tr.result").count() == 5  # the health check is hidden
    page.fill("input[name=key]", seed.SLOW_ORDER)
    page.click("#search button")
    page.wait_for_url(re.compile(r"key=qt-slow"))
    assert page.locator("#results tr.result").count() == 1
    shot(page, artifacts, "search")
    page.click("a.trace-link")
    page.wait_for_selector("#waterfall")
    matched = page.locator(".wf .row.match")
    assert matched.count() >= 1
    assert {matched.nth(i).get_attribute("data-service") for i in range(matched.count())} >= {
        "execution"
    }


def test_waterfall_find_collapse_and_deep_link(page: Any, viewer: str, artifacts: Path) -> None:
    page.goto(f"{viewer}/trace/{seed.FAST}")
    rows = page.locator(".wf .row")
    total = rows.count()
    assert total == 19
    page.fill("#find", "risk-safety")
    assert page.inner_text("#find-count") == f"3 of {total} spans match"
    assert page.locator(".wf .row.found").count() == 3
    # Collapse the tick's consumer: everything under it disappears, then comes back.
    consumer = page.locator(".wf .row", has_text="process market.tick").first
    consumer.locator(".toggle").click()
    assert page.locator(".wf .row:not(.hidden)").count() == 2
    consumer.locator(".toggle").click()
    assert page.locator(".wf .row:not(.hidden)").count() == total
    # The critical path is marked: rows and the stream wait after the producer.
    assert page.locator(".wf .row.crit").count() >= 5
    assert page.locator(".wf .cp.wait").count() >= 1
    # A deep link opens the span, with its attributes and its log line.
    page.goto(f"{viewer}/trace/{seed.FAST}#span-{seed.SUBMIT_SPAN}")
    target = page.locator(f"#span-{seed.SUBMIT_SPAN}")
    page.wait_for_function(
        f"document.getElementById('span-{seed.SUBMIT_SPAN}').classList.contains('target')"
    )
    details = target.locator("details")
    assert details.get_attribute("open") is not None
    assert "order placed" in details.inner_text()
    assert "qt-fast-0001" in details.inner_text()
    shot(page, artifacts, "waterfall")


def test_span_links_are_navigable_both_ways(page: Any, viewer: str, artifacts: Path) -> None:
    page.goto(f"{viewer}/trace/{seed.FAST}#span-{seed.SUBMIT_SPAN}")
    back = page.locator(f"#span-{seed.SUBMIT_SPAN} a.span-link", has_text="order.fill")
    back.click()
    page.wait_for_url(re.compile(seed.FILL))
    fill = page.locator(".wf .row.target")
    assert "order.fill" in fill.inner_text()
    fill.locator("a.span-link").first.click()
    page.wait_for_url(re.compile(f"{seed.FAST}#span-{seed.SUBMIT_SPAN}"))
    page.wait_for_selector(f"#span-{seed.SUBMIT_SPAN}.target")
    shot(page, artifacts, "linked")


def test_order_page_draws_its_traces_on_one_axis_with_the_link(
    page: Any, viewer: str, artifacts: Path
) -> None:
    page.goto(f"{viewer}/order/{seed.FAST_ORDER}")
    assert page.inner_text("#service-count") == "7"
    assert page.inner_text("#trace-count") == "2"
    assert page.inner_text("#states") == "ACCEPTED → FILLED"
    assert page.locator(".wf .trace-head").count() == 2
    # The fill's link to the order span is drawn as a curve between the two rows.
    assert page.get_attribute(".wf", "data-links-drawn") == "1"
    assert page.locator("svg.links > path").count() == 1
    timeline = page.inner_text("#timeline")
    assert "fill" in timeline and "BUY 0.01 @ 40000" in timeline and "booking" in timeline
    shot(page, artifacts, "order")


def test_two_search_results_ticked_are_compared(page: Any, viewer: str, artifacts: Path) -> None:
    page.goto(viewer + "/?service=risk-safety")
    page.check(f"#results input[value='{seed.FAST}']")
    page.check(f"#results input[value='{seed.SLOW}']")
    page.click("#pick button")
    page.wait_for_selector("#stages tr.stage")
    assert "+24.000" in page.locator("#stages tr.stage").first.inner_text()
    page.goto(viewer + "/")
    page.check(f"#results input[value='{seed.FAST}']")
    page.click("#pick button")
    assert "tick two traces to compare, not 1" in page.inner_text(".error-box")


def test_statistics_and_compare(page: Any, viewer: str, artifacts: Path) -> None:
    page.goto(f"{viewer}/trace/{seed.SLOW}/stats")
    first = page.locator("#by-service tr").nth(1).inner_text()
    assert first.startswith("trading-bot") or first.startswith("risk-safety")
    page.goto(f"{viewer}/compare")
    page.fill("input[name=a]", seed.FAST)
    page.fill("input[name=b]", seed.SLOW)
    page.click("form.filters button")
    page.wait_for_selector("#stages tr.stage")
    top = page.locator("#stages tr.stage").first.inner_text()
    assert "+24.000" in top
    assert "quote_age_ms" in page.inner_text("#attributes")
    shot(page, artifacts, "compare")


def test_tick_to_trade_numbers_lead_to_example_traces(
    page: Any, viewer: str, artifacts: Path
) -> None:
    page.goto(f"{viewer}/stages?window=5m")
    row = page.locator("#stages tr.stage[data-stage='risk-safety: POST /check']")
    cells = row.locator("td")
    # stage, count, then wait / service / SQL / total, three quantiles each.
    assert cells.count() == 14
    assert cells.nth(1).inner_text() == "2"
    sql_p99 = cells.nth(9)
    # The middle of its histogram bucket: within 1 % of the slow trade's 25 ms of SQL.
    assert float(sql_p99.inner_text()) == pytest.approx(25.0, rel=0.011)
    shot(page, artifacts, "stages")
    sql_p99.locator("a").click()
    page.wait_for_url(re.compile(f"/trace/{seed.SLOW}"))


def test_decisions_are_searchable_with_the_funnel(page: Any, viewer: str, artifacts: Path) -> None:
    page.goto(f"{viewer}/decisions?window=5m")
    assert page.locator("#decisions tr.decision").count() == 4
    btc = page.locator("#funnel tr.funnel", has_text="BTCUSDT").inner_text().split("\t")
    assert btc[2:5] == ["2", "2", "1"]
    page.fill("input[name=q]", "ETHUSDT LOW_CONFIDENCE")
    page.click("form.filters button")
    page.wait_for_url(re.compile(r"q=ETHUSDT"))
    rows = page.locator("#decisions tr.decision")
    assert rows.count() == 1 and "0.2100" in rows.first.inner_text()
    shot(page, artifacts, "decisions")


def test_service_map_and_a_dashboard_whose_services_are_down(
    page: Any, viewer: str, artifacts: Path
) -> None:
    page.goto(f"{viewer}/map?window=5m")
    assert page.locator("svg#map circle").count() >= 7
    edges = page.locator("#edges tr.edge")
    edge = edges.filter(has_text="trading-bot").filter(has_text="risk-safety").inner_text()
    assert edge.split("\t")[2:4] == ["http", "2"]
    shot(page, artifacts, "map")
    page.goto(f"{viewer}/dashboard")
    assert "NOT READY" in page.inner_text("#health")
    assert "unknown" in page.inner_text("#risk")
    shot(page, artifacts, "dashboard-down")
