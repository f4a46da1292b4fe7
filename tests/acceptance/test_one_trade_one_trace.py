"""Acceptance: seven real services, one trade, one trace — HTTP, bus and SQL joined, logs, PnL.

The seven services (every built one) run as separate processes against a real Redis
(`TEST_REDIS_URL`, else an embedded one) and real databases (SQLite files, or one PostgreSQL
database per service when `TEST_DATABASE_URL` is set). Their spans arrive over OTLP/HTTP at
a receiver in this test.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import httpx
import pytest

from backend.infra.service import BUILT_SERVICES
from backend.infra.traceview import OtlpSpan
from tests.acceptance.harness import (
    base_env,
    bus_joins,
    databases,
    http,
    json_lines,
    poll,
    service_of,
    services,
)
from tests.support.otlp import OtlpReceiver
from tests.support.polling import wait_until
from tests.support.procs import Proc

OFF_THE_TRADE_PATH = {"rl-training", "clm"}
"""Services that learn from trades after the fact: no tick or order passes through them."""
ALL = [spec.name for spec in BUILT_SERVICES if spec.name not in OFF_THE_TRADE_PATH]
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
ZERO = Decimal(0)

# Knobs that make the first trade quick and deterministic (see each service's settings).
KNOBS = {
    "DB_LOG_STATEMENTS": "true",
    "AI_TRAIN_STEPS": "3000",
    "AI_HOLD_BAND": "0",
    "BOT_MIN_CONFIDENCE": "0",
    "BOT_DECISION_INTERVAL_MS": "400",
    "FEED_SEED": "11",
    "FEED_RATE_HZ": "20",
    "FEED_SPEEDUP": "30",
    "RISK_MAX_ORDERS": "1000",
}


@dataclass
class Pipeline:
    otlp: OtlpReceiver
    running: dict[str, tuple[Proc, str]]

    def url(self, name: str) -> str:
        return self.running[name][1]

    def logs(self, name: str) -> list[dict[str, Any]]:
        return json_lines(self.running[name][0])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("pipeline")
    with OtlpReceiver() as otlp, databases(tmp, ALL, "qt_accept") as dbs:
        env = base_env(redis_url, otlp.http_endpoint) | KNOBS
        with services(ALL, tmp, env, per_service=dbs, timeout_s=60) as running:
            yield Pipeline(otlp, running)


def in_trace(spans: list[OtlpSpan], trace_id: str) -> list[OtlpSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def http_joins(spans: list[OtlpSpan]) -> set[tuple[str, str]]:
    """(client service, server service) of every SERVER span whose parent is a remote CLIENT."""
    by_id = {s.span_id: s for s in spans}
    joins = set()
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        remote = parent is not None and service_of(parent) != service_of(span)
        if span.kind == SERVER and parent is not None and parent.kind == CLIENT and remote:
            joins.add((service_of(parent), service_of(span)))
    return joins


# The bot sizes from the fills it follows on the bus, not from a portfolio read per decision.
EXPECTED_HTTP = {
    ("trading-bot", "ai-engine"),
    ("trading-bot", "risk-safety"),
    ("trading-bot", "execution"),
}
EXPECTED_BUS = {
    ("eventbus-bridge", "trading-bot", "process market.tick"),
    ("execution", "portfolio-intelligence", "process order.filled"),
    ("execution", "trading-bot", "process order.filled"),
    # position-monitor follows the position the fill moved, in the same trace.
    ("portfolio-intelligence", "position-monitor", "process position.updated"),
}


def first_filled_bot_order(p: Pipeline) -> tuple[dict[str, Any], dict[str, Any]] | None:
    ordered = httpx.get(
        f"{p.url('trading-bot')}/decisions", params={"outcome": "ORDERED", "limit": 1000}
    ).json()["data"]
    for decision in reversed(ordered):
        order = httpx.get(f"{p.url('execution')}/orders/{decision['client_order_id']}")
        if order.status_code == 200 and order.json()["status"] == "FILLED":
            return decision, order.json()
    return None


def test_one_trade_is_one_trace_across_every_service_on_its_path(pipeline: Pipeline) -> None:
    p = pipeline
    decision, order = poll(lambda: first_filled_bot_order(p), 120, "a bot order to fill")
    trace_id = decision["trace_id"]
    coid = decision["client_order_id"]
    assert trace_id and order["client_order_id"] == coid

    def complete(spans: list[OtlpSpan]) -> bool:
        mine = in_trace(spans, trace_id)
        return (
            {service_of(s) for s in mine} >= set(ALL)
            and http_joins(mine) >= EXPECTED_HTTP
            and bus_joins(mine) >= EXPECTED_BUS
        )

    spans = in_trace(p.otlp.wait_for(complete, timeout_s=90), trace_id)

    # One trace, started by the tick's PRODUCER span in the bridge.
    assert {service_of(s) for s in spans} == set(ALL)
    (root,) = [s for s in spans if not s.parent_span_id]
    assert (service_of(root), root.kind, root.name) == (
        "eventbus-bridge",
        PRODUCER,
        "send market.tick",
    )
    assert http_joins(spans) >= EXPECTED_HTTP
    assert bus_joins(spans) >= EXPECTED_BUS

    # The decision stages, with their domain attributes.
    stages = {s.name: s for s in spans if service_of(s) == "trading-bot"}
    for stage in ("sizing", "risk_check", "submit_order"):
        assert stage in stages, stage
    submit = stages["submit_order"].attributes
    assert submit["client_order_id"] == coid and submit["symbol"] == order["symbol"]
    assert submit["model_version"] == decision["model_version"]
    (signal,) = [s for s in spans if s.name == "signal"]
    assert signal.attributes["model_version"] == decision["model_version"]

    # SQL: CLIENT spans in the trace, each statement sent with that span's traceparent.
    sql = [s for s in spans if s.kind == CLIENT and "db.system.name" in s.attributes]
    assert {"trading-bot", "execution"} <= {service_of(s) for s in sql}
    # Log lines are written by each service's flusher thread, asynchronously (and possibly
    # after the spans were exported): the checks below are retried until they hold or time out.
    wait_until(
        lambda: _trade_logged(p, trace_id, coid, sql) or None,
        30,
        "the trade's log lines to be written",
        0.2,
        ignoring=(AssertionError,),
    )


def _trade_logged(p: Pipeline, trace_id: str, coid: str, sql: list[OtlpSpan]) -> bool:
    """Assert the trade's log lines: each SQL statement sent with its span's traceparent, the
    trace id on a line of every service that handled the trade, and the bot's decision."""
    for name in {service_of(s) for s in sql}:
        sent = " ".join(
            line["statement"]
            for line in p.logs(name)
            if line.get("logger") == "backend.infra.db.statements"
        )
        for span in (s for s in sql if service_of(s) == name):
            assert f"traceparent='00-{trace_id}-{span.span_id}-" in sent, (name, span.name)

    # Logs of the services that handled the trade carry its trace id. (The bridge only opens
    # the trace: it logs feed events, not each tick.)
    for name in [n for n in ALL if n != "eventbus-bridge"]:
        assert any(line.get("trace_id") == trace_id for line in p.logs(name)), name
    (logged,) = [
        line
        for line in p.logs("trading-bot")
        if line["message"] == "decision" and line.get("client_order_id") == coid
    ]
    assert logged["trace_id"] == trace_id and logged["outcome"] == "ORDERED"
    return True


def place_resting_buy(p: Pipeline, quote: dict[str, Any]) -> tuple[str, str]:
    """Check and place a limit buy 2 bp under the ask; returns its client order id and status."""
    limit = (Decimal(quote["ask"]) * Decimal("0.9998")).quantize(Decimal("0.01"), ROUND_FLOOR)
    coid = f"accept-limit-{uuid.uuid4().hex[:12]}"
    # Each placement starts a trace of its own.
    headers = {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}
    body = {
        "client_order_id": coid,
        "symbol": quote["symbol"],
        "side": "BUY",
        "quantity": str((Decimal(200) / limit).quantize(Decimal("0.0001"))),
        "order_type": "LIMIT",
        "limit_price": str(limit),
        "reduce_only": False,
    }
    verdict = http.post(
        f"{p.url('risk-safety')}/check", json={**body, "price": quote["ask"]}, headers=headers
    ).json()
    assert verdict["approved"], verdict
    placed = http.post(
        f"{p.url('execution')}/orders",
        json={**body, "approval": verdict["approval"]},
        headers=headers,
    )
    assert placed.status_code == 201, placed.text
    return coid, placed.json()["status"]


def a_filled_order(p: Pipeline, coids: list[str]) -> str | None:
    for coid in coids:
        order = httpx.get(f"{p.url('execution')}/orders/{coid}").json()
        if Decimal(str(order["filled_quantity"])) > 0:
            return coid
    return None


def test_a_resting_limit_orders_later_fill_links_to_the_orders_trace(pipeline: Pipeline) -> None:
    p = pipeline
    # A buy a little under the ask on every symbol; whichever market dips first fills its
    # order. An order the market crossed before it arrived fills at once and does not count;
    # orders still resting after a round are canceled and placed again at the new quotes.
    coid = None
    orders: list[str] = []
    for _round in range(6):
        resting = []
        for quote in sorted(httpx.get(f"{p.url('execution')}/quotes").json(), key=str):
            placed, status = place_resting_buy(p, quote)
            if status == "ACCEPTED":
                resting.append(placed)
        orders += resting
        try:
            coid = poll(lambda r=resting: a_filled_order(p, r), 5, "a resting limit order to fill")
            break
        except AssertionError:
            for other in resting:
                http.post(f"{p.url('execution')}/orders/{other}/cancel")
    assert coid is not None, "no resting limit order filled in six rounds"

    # The order's trace, as execution logged it when the order was placed (its INFO lines are
    # written by the log sink's thread, within 200 ms).
    def placed_line() -> str:
        (trace_id,) = [
            line["trace_id"]
            for line in p.logs("execution")
            if line["message"] == "order placed" and line.get("client_order_id") == coid
        ]
        return str(trace_id)

    order_trace = poll(placed_line, 5, "execution's 'order placed' line")

    def fill_span(spans: list[OtlpSpan]) -> bool:
        return any(
            s.name == "order.fill" and s.attributes.get("client_order_id") == coid for s in spans
        ) and any(s.trace_id == order_trace and s.kind == SERVER for s in spans)

    spans = p.otlp.wait_for(fill_span, timeout_s=60)
    (fill, *_) = [
        s for s in spans if s.name == "order.fill" and s.attributes.get("client_order_id") == coid
    ]
    assert fill.trace_id != order_trace, "the fill happened later, on a tick"
    assert fill.attributes["liquidity"] == "MAKER"
    linked = {trace for trace, _span in fill.links}
    assert order_trace in linked
    placing = [s for s in spans if s.trace_id == order_trace and service_of(s) == "execution"]
    assert any(s.kind == SERVER and s.attributes.get("http.route") == "/orders" for s in placing)
    assert {span for trace, span in fill.links if trace == order_trace} <= {
        s.span_id for s in placing
    }
    for other in orders:
        if other != coid:
            http.post(f"{p.url('execution')}/orders/{other}/cancel")


COST_QUANTUM = Decimal("1e-12")
"""The ledger's convention (docs/DATABASE.md): the cost a partial close takes off a position
is rounded to twelve decimal places (`backend/trading/portfolio.py`, `COST_PLACES`), so the
rest keeps an exact, storable cost basis."""


def recompute(fills: list[dict[str, Any]], initial_cash: Decimal) -> dict[str, Any]:
    """Average-cost positions (cost basis), realized PnL (before fees), fees and cash."""
    positions: dict[str, dict[str, Decimal]] = {}
    cash = initial_cash
    for f in fills:
        qty, price, fee = Decimal(f["quantity"]), Decimal(f["price"]), Decimal(f["fee"])
        signed = qty if f["side"] == "BUY" else -qty
        pos = positions.setdefault(
            f["symbol"], {"quantity": ZERO, "cost": ZERO, "realized": ZERO, "fees": ZERO}
        )
        held = pos["quantity"]
        if held == 0 or (held > 0) == (signed > 0):
            pos["quantity"] = held + signed
            pos["cost"] += signed * price
        else:
            closed = min(qty, abs(held))
            if closed == abs(held):
                removed = pos["cost"]
            else:
                removed = (pos["cost"] * closed / abs(held)).quantize(COST_QUANTUM)
            direction = 1 if held > 0 else -1
            pos["realized"] += direction * price * closed - removed
            pos["quantity"] = held - direction * closed
            pos["cost"] -= removed
            if qty > closed:  # through zero: the rest opens at the fill price
                pos["quantity"] = (qty - closed) * (1 if signed > 0 else -1)
                pos["cost"] = pos["quantity"] * price
        pos["fees"] += fee
        cash -= signed * price + fee
    for pos in positions.values():
        pos["avg"] = pos["cost"] / pos["quantity"] if pos["quantity"] else ZERO
    return {"positions": positions, "cash": cash}


def test_the_portfolio_equals_a_recomputation_from_the_fills(pipeline: Pipeline) -> None:
    p = pipeline
    execution, portfolio = p.url("execution"), p.url("portfolio-intelligence")
    # No new fills while the books are compared: no new orders, no resting ones left.
    http.post(f"{p.url('trading-bot')}/stop")
    http.post(f"{execution}/orders/cancel-all")

    def settled() -> list[dict[str, Any]] | None:
        orders = httpx.get(f"{execution}/orders", params={"limit": 1000}).json()["data"]
        fills = [
            {
                **fill,
                "symbol": o["symbol"],
                "side": o["side"],
                "client_order_id": o["client_order_id"],
            }
            for o in orders
            for fill in o["fills"]
        ]
        booked = httpx.get(f"{portfolio}/fills", params={"limit": 100_000}).json()["data"]
        if fills and {f["fill_id"] for f in fills} == {f["fill_id"] for f in booked}:
            return fills
        return None

    def stable() -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        # A decision in flight when the bot stopped may still fill: take a snapshot of the
        # portfolio between two identical, fully booked views of execution's fills.
        before = settled()
        book = httpx.get(f"{portfolio}/portfolio").json()
        after = settled()
        if before and after and [f["fill_id"] for f in before] == [f["fill_id"] for f in after]:
            return after, book
        return None

    fills, book = poll(stable, 90, "portfolio-intelligence to book every fill of execution")
    # Average cost depends on the order of fills: replay them in the venue's sequence.
    fills.sort(key=lambda f: f["sequence"])
    expected = recompute(fills, Decimal(book["initial_cash"]))

    assert Decimal(book["cash"]) == expected["cash"]
    assert Decimal(book["fees"]) == sum(f["fees"] for f in expected["positions"].values())
    reported = {pos["symbol"]: pos for pos in book["positions"]}
    realized = ZERO
    unrealized = ZERO
    for symbol, pos in expected["positions"].items():
        got = reported[symbol]
        assert Decimal(got["quantity"]) == pos["quantity"], symbol
        assert Decimal(got["realized_pnl"]) == pos["realized"], symbol
        realized += pos["realized"]
        if pos["quantity"] != 0:
            assert Decimal(got["avg_price"]) == pos["avg"], symbol
            upnl = pos["quantity"] * Decimal(got["mark"]) - pos["cost"]
            assert Decimal(got["unrealized_pnl"]) == upnl, symbol
            unrealized += upnl
    assert any(pos["quantity"] > 0 for pos in expected["positions"].values()), "a position is held"
    assert Decimal(book["realized_pnl"]) == realized
    assert Decimal(book["unrealized_pnl"]) == unrealized
