"""Acceptance: a scripted price path hits a trailing stop, through four real services.

execution, risk-safety, portfolio-intelligence and position-monitor run as separate processes
against a real Redis and real databases, their spans arriving at an OTLP receiver in this
test. The test buys BTCUSDT through risk-safety and execution, then publishes the price path
itself, each tick in a trace of its own: up (the trailing stop ratchets), a kill -9 and
restart of position-monitor at the top (the level stays where it was), up again, then down
through the level. The exit must fill once, close the position with the realized PnL a
recomputation from execution's fills gives, and be one trace from the tick through
position-monitor's `stop.trigger` to risk-safety, execution and the portfolio. A second
restart after the exit, and more ticks under the level, send nothing more.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.infra.traceview import OtlpSpan
from tests.acceptance.harness import (
    SPECS,
    base_env,
    bus_joins,
    databases,
    http,
    poll,
    service_of,
    services,
)
from tests.support.factories import market_tick
from tests.support.otlp import OtlpReceiver
from tests.support.procs import Proc, free_port, wait_ready

SYMBOL = "BTCUSDT"
SPREAD = Decimal("0.10")
QUANTITY = Decimal(1)
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
BACKEND = ["execution", "risk-safety", "portfolio-intelligence"]
MONITOR = "position-monitor"

KNOBS = {
    "EVENTBUS_BLOCK_MS": "50",
    "RISK_MAX_ORDERS": "1000",
    # The defaults every new position gets: a wide trailing stop the test narrows over HTTP,
    # and no take profit (the path rises 5 %) nor stop loss in its way.
    "MONITOR_STOP_LOSS_PCT": "10",
    "MONITOR_TAKE_PROFIT_PCT": "0",
    "MONITOR_TRAILING_STOP_PCT": "5",
    "MONITOR_CHECK_INTERVAL_MS": "200",
    "MONITOR_RECONCILE_INTERVAL_MS": "1000",
}
TRAIL_PCT = Decimal(2)
UP = ["100.60", "101.50", "103.00", "104.00"]
"""Bids after the entry: the best bid becomes 104, the level 104 x 0.98 = 101.92."""
UP_AGAIN = ["105.00", "103.50"]
"""After the restart: a new best (level 102.90), then a pullback that stays above it."""
THROUGH = "102.80"
"""The tick that crosses the level."""
UNDER = ["102.00", "101.00"]
"""Ticks further down, after the exit: nothing may happen on them."""


def level_at(best: str) -> Decimal:
    return Decimal(best) * (1 - TRAIL_PCT / 100)


@dataclass
class Stack:
    tmp: Path
    redis: str
    env: dict[str, str]
    otlp: OtlpReceiver
    running: dict[str, tuple[Proc, str]]
    monitor_port: int = field(default_factory=free_port)
    monitors: list[Proc] = field(default_factory=list)
    tick_traces: dict[str, str] = field(default_factory=dict)
    """Trace id of each tick published, by its bid."""

    def url(self, name: str) -> str:
        if name == MONITOR:
            return f"http://127.0.0.1:{self.monitor_port}"
        return self.running[name][1]

    @property
    def monitor(self) -> Proc:
        return self.monitors[-1]

    def start_monitor(self) -> None:
        env = {**self.env, "PORT": str(self.monitor_port)}
        for name, (_proc, url) in self.running.items():
            env[SPECS[name].url_variable] = url
        log = self.tmp / "logs" / f"{MONITOR}-{len(self.monitors) + 1}.log"
        proc = Proc([SPECS[MONITOR].script], env, log)
        self.monitors.append(proc)
        wait_ready(proc, self.monitor_port, "/health/ready", 60, name=MONITOR, with_output=True)

    def kill_monitor(self) -> None:
        """kill -9: nothing is flushed or said goodbye to; what survives was stored before."""
        self.monitor.stop(signal.SIGKILL)

    def tick(self, bid: str) -> None:
        """Publish a BTCUSDT tick at `bid` in a trace of its own, as a feed would."""
        trace_id = secrets.token_hex(16)
        self.tick_traces[bid] = trace_id
        publish_in_trace(
            self.redis,
            self.env["EVENTBUS_PREFIX"],
            trace_id,
            market_tick(bid, str(Decimal(bid) + SPREAD)),
        )

    def quoted(self, bid: str) -> None:
        """Wait until execution and risk-safety both hold the quote at `bid`."""

        def seen() -> bool:
            at_execution = any(
                q["symbol"] == SYMBOL and Decimal(str(q["bid"])) == Decimal(bid)
                for q in http.get(f"{self.url('execution')}/quotes").json()
            )
            at_risk = any(
                q["symbol"] == SYMBOL and Decimal(str(q["bid"])) == Decimal(bid)
                for q in http.get(f"{self.url('risk-safety')}/state").json()["quotes"]
            )
            return at_execution and at_risk

        poll(seen, 15, f"execution and risk-safety to quote {SYMBOL} at {bid}", 0.02)

    def handled(self, bid: str) -> None:
        """Wait until position-monitor handled the tick at `bid` (its span arrived)."""
        trace_id = self.tick_traces[bid]
        self.otlp.wait_for(
            lambda spans: any(
                x.trace_id == trace_id
                and service_of(x) == MONITOR
                and x.name == "process market.tick"
                for x in spans
            ),
            timeout_s=15,
        )

    def decimal(self, name: str) -> Decimal | None:
        """A decimal field of the position (None while it is null: no tick judged yet)."""
        value = self.position()[name]
        return None if value is None else Decimal(value)

    def position(self) -> dict[str, Any]:
        (found,) = http.get(f"{self.url(MONITOR)}/positions").json()["data"]
        return dict(found)

    def orders(self) -> list[dict[str, Any]]:
        answer = http.get(f"{self.url('execution')}/orders", params={"limit": 1000}).json()
        return list(answer["data"])


def publish_in_trace(redis_url: str, prefix: str, trace_id: str, *ticks: Any) -> None:
    """Publish `ticks` with the current context in trace `trace_id`: the tick's PRODUCER span,
    and so the `traceparent` the consumers continue, belong to that trace."""
    from opentelemetry import context, trace

    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            int(trace_id, 16),
            int(secrets.token_hex(8), 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )

    async def send() -> None:
        client = create_redis_client(redis_url)
        token = context.attach(trace.set_span_in_context(parent))
        try:
            await EventPublisher(client, "test-feed", EventBusSettings(prefix=prefix)).publish_many(
                ticks
            )
        finally:
            context.detach(token)
            await client.aclose()

    asyncio.run(send())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("posmon")
    (tmp / "db").mkdir()
    with OtlpReceiver() as otlp, databases(tmp, [*BACKEND, MONITOR], "qt_posmon") as dbs:
        env = base_env(redis_url, otlp.http_endpoint) | KNOBS
        with services(BACKEND, tmp, env, per_service=dbs, timeout_s=60) as running:
            s = Stack(tmp, redis_url, env | dbs[MONITOR], otlp, running)
            try:
                s.start_monitor()
                yield s
            finally:
                s.monitor.stop()


def in_trace(spans: list[OtlpSpan], trace_id: str) -> list[OtlpSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def http_joins(spans: list[OtlpSpan]) -> set[tuple[str, str, str]]:
    """(client service, server service, route) of SERVER spans under a remote CLIENT span."""
    by_id = {s.span_id: s for s in spans}
    joins = set()
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        joined = parent is not None and parent.kind == CLIENT and span.kind == SERVER
        if parent is not None and joined and service_of(parent) != service_of(span):
            route = str(span.attributes.get("http.route", ""))
            joins.add((service_of(parent), service_of(span), route))
    return joins


def ancestors(span: OtlpSpan, spans: list[OtlpSpan]) -> list[OtlpSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    parent = by_id.get(span.parent_span_id)
    while parent is not None:
        chain.append(parent)
        parent = by_id.get(parent.parent_span_id)
    return chain


EXPECTED_HTTP = {
    ("position-monitor", "risk-safety", "/check"),
    ("position-monitor", "execution", "/orders"),
}
EXPECTED_BUS = {
    ("execution", "portfolio-intelligence", "process order.filled"),
    ("portfolio-intelligence", "position-monitor", "process position.updated"),
}


def buy(s: Stack) -> dict[str, Any]:
    """Enter the position as any trader would: risk-safety's check, then execution's order."""
    s.tick("100.00")
    s.quoted("100.00")
    body = {
        "client_order_id": f"accept-entry-{uuid.uuid4().hex[:12]}",
        "symbol": SYMBOL,
        "side": "BUY",
        "quantity": str(QUANTITY),
        "order_type": "MARKET",
        "reduce_only": False,
    }

    def approved() -> dict[str, Any] | None:
        # Right after start the portfolio may not have found its books complete yet
        # (STALE_PORTFOLIO): a trader asks again.
        verdict = http.post(f"{s.url('risk-safety')}/check", json=body).json()
        assert verdict["approved"] or verdict["reason"] == "STALE_PORTFOLIO", verdict
        return verdict if verdict["approved"] else None

    verdict = poll(approved, 15, "risk-safety to approve the entry")
    placed = http.post(
        f"{s.url('execution')}/orders", json={**body, "approval": verdict["approval"]}
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "FILLED", order
    return dict(order)


def test_a_trailing_stop_exits_once_across_restarts_in_one_trace(stack: Stack) -> None:
    s = stack
    entry = buy(s)
    position = poll(
        lambda: s.position() if s.position()["status"] == "OPEN" else None,
        15,
        "position-monitor to watch the position",
    )
    position_id = position["position_id"]
    assert Decimal(position["quantity"]) == QUANTITY
    assert Decimal(position["entry_price"]) == Decimal(str(entry["avg_fill_price"]))
    # The defaults of the settings, then the trailing stop narrowed over HTTP, with the token.
    assert position["stops"]["trailing_stop"] == {"value": "5", "kind": "PERCENT"}
    stops = {
        **position["stops"],
        "trailing_stop": {"value": str(TRAIL_PCT), "kind": "PERCENT"},
    }
    path = f"{s.url(MONITOR)}/positions/{position_id}/stops"
    assert httpx.put(path, json=stops).status_code == 401
    changed = http.put(path, json=stops)
    assert changed.status_code == 200, changed.text
    assert changed.json()["stops"]["trailing_stop"]["value"] == str(TRAIL_PCT)

    for bid in UP:
        s.tick(bid)
    top = level_at(UP[-1])
    poll(
        lambda: s.decimal("trailing_level") == top,
        15,
        f"the trailing level to ratchet up to {top}",
    )

    # Restart at the top of the path: the level is the one stored before the kill.
    s.kill_monitor()
    s.start_monitor()
    restored = s.position()
    assert restored["status"] == "OPEN"
    assert Decimal(restored["trailing_level"]) == top
    assert Decimal(restored["best_price"]) == Decimal(UP[-1])
    assert restored["stops"]["trailing_stop"]["value"] == str(TRAIL_PCT)

    for bid in UP_AGAIN:
        s.tick(bid)
    higher = level_at(UP_AGAIN[0])
    poll(
        lambda: s.decimal("trailing_level") == higher,
        15,
        f"the trailing level to ratchet up to {higher}",
    )
    s.handled(UP_AGAIN[-1])
    assert s.position()["status"] == "OPEN", "a pullback above the level exits nothing"

    s.tick(THROUGH)
    closed = poll(
        lambda: s.position() if s.position()["status"] == "CLOSED" else None,
        20,
        "the exit to fill and close the position",
    )
    exit_ = closed["exit"]
    assert (exit_["reason"], exit_["stage"], exit_["outcome"]) == (
        "TRAILING_STOP",
        "EXIT",
        "FILLED",
    )
    assert Decimal(exit_["trigger_price"]) == higher
    assert Decimal(exit_["observed_price"]) == Decimal(THROUGH)
    assert exit_["client_order_id"] == f"pm-{position_id}-TS"

    # The exit filled once, in full, as a reduce-only market sell.
    exits = [o for o in s.orders() if o["client_order_id"].startswith("pm-")]
    (sold,) = exits
    assert (sold["side"], sold["order_type"], sold["reduce_only"], sold["status"]) == (
        "SELL",
        "MARKET",
        True,
        "FILLED",
    )
    assert Decimal(str(sold["filled_quantity"])) == QUANTITY

    # The realized PnL, recomputed from execution's own fills.
    fills = [(f, "BUY") for f in entry["fills"]] + [(f, "SELL") for f in sold["fills"]]
    bought = sum(
        (
            Decimal(str(f["quantity"])) * Decimal(str(f["price"]))
            for f, side in fills
            if side == "BUY"
        ),
        Decimal(0),
    )
    sold_for = sum(
        (
            Decimal(str(f["quantity"])) * Decimal(str(f["price"]))
            for f, side in fills
            if side == "SELL"
        ),
        Decimal(0),
    )
    expected_pnl = sold_for - bought
    assert expected_pnl > 0, "the trailing stop locked in a gain"

    def booked() -> dict[str, Any] | None:
        book = http.get(f"{s.url('portfolio-intelligence')}/portfolio").json()
        (pos,) = [p for p in book["positions"] if p["symbol"] == SYMBOL]
        return dict(pos) if Decimal(str(pos["quantity"])) == 0 else None

    pos = poll(booked, 15, "the portfolio to book the exit")
    assert Decimal(str(pos["realized_pnl"])) == expected_pnl
    fees = sum((Decimal(str(f["fee"])) for f, _side in fills), Decimal(0))
    assert Decimal(str(pos["fees"])) == fees

    # One trace: the tick, position-monitor's stop.trigger, risk-safety, execution, portfolio.
    trace_id = s.tick_traces[THROUGH]
    assert exit_["trace_id"] == trace_id

    def complete(spans: list[OtlpSpan]) -> bool:
        mine = in_trace(spans, trace_id)
        return http_joins(mine) >= EXPECTED_HTTP and bus_joins(mine) >= EXPECTED_BUS

    spans = in_trace(s.otlp.wait_for(complete, timeout_s=30), trace_id)
    (trigger,) = [x for x in spans if x.name == "stop.trigger"]
    assert service_of(trigger) == MONITOR
    assert trigger.attributes["reason"] == "TRAILING_STOP"
    assert trigger.attributes["client_order_id"] == exit_["client_order_id"]
    (consumer,) = [x for x in ancestors(trigger, spans) if x.kind == CONSUMER]
    assert (service_of(consumer), consumer.name) == (MONITOR, "process market.tick")
    # The consumer continues the tick's own span (the test's feed, which exports nothing).
    assert consumer.parent_span_id and consumer.parent_span_id not in {x.span_id for x in spans}
    for server in [x for x in spans if x.kind == SERVER and service_of(x) != MONITOR]:
        if server.attributes.get("http.route") in ("/check", "/orders"):
            assert trigger in ancestors(server, spans), server.attributes["http.route"]
    assert {service_of(x) for x in spans} >= {
        MONITOR,
        "risk-safety",
        "execution",
        "portfolio-intelligence",
    }

    # Nothing is sent twice: a restart after the exit, and ticks further under the level.
    s.kill_monitor()
    s.start_monitor()
    for bid in UNDER:
        s.tick(bid)
    for bid in UNDER:
        s.handled(bid)
    after = s.position()
    assert (after["status"], after["exit"]["client_order_id"]) == (
        "CLOSED",
        exit_["client_order_id"],
    )
    assert [o["client_order_id"] for o in s.orders() if o["client_order_id"].startswith("pm-")] == [
        exit_["client_order_id"]
    ]
    decisions = http.get(f"{s.url('risk-safety')}/decisions", params={"limit": 1000}).json()["data"]
    checked = [d for d in decisions if d["client_order_id"].startswith("pm-")]
    assert [d["client_order_id"] for d in checked] == [exit_["client_order_id"]]
