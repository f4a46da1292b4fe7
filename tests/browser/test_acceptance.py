"""Acceptance in Chromium: the real services trade and export their spans over OTLP/HTTP into
the real span store behind the viewer; the order's page shows its linked traces, two trades
are compared, the tick-to-trade table is read, and the kill switch halts trading.

Every built service runs as its own process (tests/acceptance/harness.py), against a real
Redis and SQLite files (or PostgreSQL when TEST_DATABASE_URL is set); the viewer runs in this
process, on a SQLite span store in the test's directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from backend.infra.service import BUILT_SERVICES
from backend.infra.traceview._sqlstore import SqliteSpanStore
from quantum_trader.cli import main
from quantum_trader.dashboard import create_viewer
from tests.acceptance.harness import API_TOKEN, SPECS, base_env, databases, poll, services
from tests.browser.shots import shot
from tests.support.procs import free_port
from tests.traceview.served import ServedApp

NAMES = [spec.name for spec in BUILT_SERVICES]
KNOBS = {
    "AI_TRAIN_STEPS": "3000",
    "AI_HOLD_BAND": "0",
    "BOT_MIN_CONFIDENCE": "0",
    "BOT_DECISION_INTERVAL_MS": "400",
    "FEED_SEED": "11",
    "FEED_RATE_HZ": "20",
    "FEED_SPEEDUP": "30",
    "RISK_MAX_ORDERS": "1000",
    # Logs too go to the viewer over OTLP, so a span shows the lines written inside it.
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_BLRP_SCHEDULE_DELAY": "100",
    "OTEL_METRICS_EXPORTER": "none",
}


@dataclass
class Platform:
    viewer: str
    urls: dict[str, str]
    store: SqliteSpanStore


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("viewer-acceptance")
    ports = {name: free_port() for name in NAMES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    store = SqliteSpanStore(tmp / "spans.db")
    try:
        with ServedApp(create_viewer(store, urls=urls)) as viewer:
            env = base_env(redis_url, viewer.url) | KNOBS
            with (
                databases(tmp, NAMES, "qt_viewer") as dbs,
                services(NAMES, tmp, env, per_service=dbs, ports=ports, timeout_s=180),
            ):
                yield Platform(viewer.url, urls, store)
    finally:
        store.close()


def ordered_decisions(p: Platform) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{p.urls['trading-bot']}/decisions", params={"outcome": "ORDERED", "limit": 1000}
    )
    return [d for d in answer.json()["data"] if d.get("trace_id")]


TRADE_PATH = {"trading-bot", "ai-engine", "risk-safety", "execution", "portfolio-intelligence"}
"""Services every bot order's trace has spans of; position-monitor, which follows the fill,
makes six, and the bridge that sent the tick seven. (On a loaded machine the store may sample
the tick's trace out before the order's spans make it important: the order is kept without the
bridge's first span, so the bridge is not required.)"""


def order_in_viewer(p: Platform, min_services: int) -> dict[str, Any] | None:
    """A bot order whose linked traces reached the viewer with `min_services` services, every
    one of TRADE_PATH among them (spans of one trace arrive in several batches)."""
    for decision in reversed(ordered_decisions(p)):
        answer = httpx.get(f"{p.viewer}/api/order/{decision['client_order_id']}")
        if answer.status_code != 200:
            continue
        found = answer.json()
        services = {s["service"] for s in found["data"]}
        if len(services) >= min_services and services >= TRADE_PATH and found["states"]:
            return decision
    return None


@pytest.mark.timeout(600)
def test_an_order_across_services_compare_stages_and_the_kill_switch(
    platform: Platform, page: Any, artifacts: Path
) -> None:
    p = platform
    decision = poll(lambda: order_in_viewer(p, 6), 120, "a bot order's traces in the viewer")
    coid = decision["client_order_id"]

    # The order's page: its linked traces on one axis, from at least six services.
    page.goto(f"{p.viewer}/order/{coid}")
    assert int(page.inner_text("#service-count")) >= 6
    services_text = page.inner_text("#order-summary")
    for name in TRADE_PATH:
        assert name in services_text
    assert "ACCEPTED" in page.inner_text("#states") or "FILLED" in page.inner_text("#states")
    assert page.locator("#timeline tr.entry.decision").count() >= 1
    shot(page, artifacts, "order")

    # Search by the client order id finds its trace, and the trace page highlights the match.
    page.goto(f"{p.viewer}/?key={coid}")
    page.locator("a.trace-link").first.click()
    page.wait_for_selector(".wf .row.match")
    assert page.locator(".wf .row.crit").count() >= 3
    # The order's span in execution, with the log line written inside it (once exported).
    poll(lambda: "order placed" in httpx.get(page.url).text, 20, "the order's log line")
    page.reload()
    submit = page.locator(".wf .row[data-service=execution]", has_text="order.submit").first
    submit.locator("summary").click()
    assert "order placed" in submit.locator("details").inner_text()
    shot(page, artifacts, "trace")

    # Two trades compared, stage by stage.
    def two_traces() -> list[str] | None:
        ids = [d["trace_id"] for d in ordered_decisions(p)]
        present = [t for t in ids if httpx.get(f"{p.viewer}/api/traces/{t}").status_code == 200]
        return present[:2] if len(present) >= 2 else None

    a, b = poll(two_traces, 60, "two traded traces in the viewer")
    page.goto(f"{p.viewer}/compare?a={a}&b={b}")
    stages = page.inner_text("#stages")
    assert "execution: POST /orders" in stages and "trading-bot: decide" in stages
    shot(page, artifacts, "compare")

    # The tick-to-trade table: a number per quantile, each leading to an example trace.
    page.goto(f"{p.viewer}/stages?window=15m")
    headline = page.locator("#stages tr.stage[data-stage='tick → order accepted']")
    cells = headline.locator("td")
    assert int(cells.nth(1).inner_text()) >= 1
    p50 = cells.nth(11)  # the total's p50
    assert float(p50.inner_text()) > 0
    wait = page.locator("#stages tr.stage[data-stage='trading-bot: process market.tick'] td")
    assert float(wait.nth(2).inner_text()) >= 0  # stream wait p50 of the bot's tick
    shot(page, artifacts, "stages")
    p50.locator("a").click()
    page.wait_for_url(re.compile(r"/trace/[0-9a-f]{32}"))

    # Why the bot traded: its decisions, and the funnel per symbol and model version.
    page.goto(f"{p.viewer}/decisions?window=15m&q=ORDERED")
    assert page.locator("#decisions tr.decision.ordered").count() >= 2
    funnel = [
        [int(x) for x in row.split("\t")[2:5]]
        for row in page.locator("#funnel tr.funnel").all_inner_texts()
    ]
    assert any(signals >= approved >= filled >= 1 for signals, approved, filled in funnel)
    shot(page, artifacts, "decisions")

    # The service map has the trade's calls and streams, with rates.
    page.goto(f"{p.viewer}/map?window=15m")
    edges = page.inner_text("#edges")
    assert "trading-bot\texecution\thttp" in edges
    assert "execution\tportfolio-intelligence\tstream" in edges
    shot(page, artifacts, "map")

    # `quantum-trader trace` and `status` read the same platform.
    runner = CliRunner()
    drawn = runner.invoke(main, ["trace", coid, "--viewer", p.viewer], catch_exceptions=False)
    assert drawn.exit_code == 0 and "execution: order.submit" in drawn.output
    env = {SPECS[name].url_variable: url for name, url in p.urls.items()}
    env["QT_API_TOKEN"] = API_TOKEN
    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        status = pool.submit(
            runner.invoke, main, ["status"], env=env, catch_exceptions=False
        ).result()
    assert status.exit_code == 0, status.output
    assert "risk: ACTIVE" in status.output and "portfolio: equity" in status.output

    # The dashboard: the kill switch needs the token; with it, trading halts.
    page.goto(f"{p.viewer}/dashboard")
    assert page.inner_text("#risk-state") == "ACTIVE"
    assert page.locator("#health tr.health").count() == len(NAMES)
    assert "NOT READY" not in page.inner_text("#health")
    shot(page, artifacts, "dashboard")
    page.fill("#kill-switch input[name=token]", "not-the-token-at-all")
    page.click("#kill-switch button[value=halt]")
    assert "403" in page.inner_text(".error-box")
    page.goto(f"{p.viewer}/dashboard")
    assert page.inner_text("#risk-state") == "ACTIVE"
    page.fill("#kill-switch input[name=token]", API_TOKEN)
    page.fill("#kill-switch input[name=reason]", "acceptance: halt from the viewer")
    page.click("#kill-switch button[value=halt]")
    page.wait_for_url(re.compile(r"/dashboard\?changed=halt"))
    assert page.inner_text("#risk-state") == "HALTED"
    assert "acceptance: halt from the viewer" in page.inner_text("#risk")
    shot(page, artifacts, "halted")
    state = httpx.get(f"{p.urls['risk-safety']}/state").json()
    assert state["state"] == "HALTED" and state["reason"] == "acceptance: halt from the viewer"
