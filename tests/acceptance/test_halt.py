"""Acceptance: HALTED end to end with the real services, by the push and by the poll alone.

Six real processes (execution, risk-safety, portfolio-intelligence, ai-engine, eventbus-bridge
feeding ETHUSDT and SOLUSDT, trading-bot trading them) against a real Redis and real
databases. The test itself trades BTCUSDT, whose ticks it publishes, through risk-safety's
`POST /check` then execution's `POST /orders` from several threads: market buys, limit buys
the ticks keep crossing, reduce-only sells. risk-safety reaches execution through a forwarding
proxy of the test, which can refuse `POST /risk/state` alone: then the halt reaches execution
by its poll of `GET /state` only. Every assertion on what filled reads execution's own data:
the orders with their fills' venue `sequence`, and `GET /risk/state`'s `adopted_fill_sequence`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import httpx
import pytest

from backend.infra.service import BUILT_SERVICES
from tests.acceptance.harness import (
    API_TOKEN,
    ForwardingProxy,
    base_env,
    http,
    json_lines,
    poll,
    services,
)
from tests.support.halting import TickFeed, market_tick, publish_ticks
from tests.support.procs import Proc, free_port

# position-monitor stays out: its stops would sell what the test holds on the test's own ticks.
SIX = [spec.name for spec in BUILT_SERVICES if spec.name != "position-monitor"]
SYMBOL = "BTCUSDT"
POLL_MS = 250
POLL_TIMEOUT_MS = 1000
DECISION_INTERVAL_MS = 400
BOT_SYMBOLS = "ETHUSDT,SOLUSDT"

KNOBS = {
    "EVENTBUS_BLOCK_MS": "50",
    "AI_TRAIN_STEPS": "3000",
    "AI_HOLD_BAND": "0",
    "BOT_MIN_CONFIDENCE": "0",
    "BOT_DECISION_INTERVAL_MS": str(DECISION_INTERVAL_MS),
    "BOT_SYMBOLS": BOT_SYMBOLS,
    "FEED_SYMBOLS": BOT_SYMBOLS,
    "FEED_SEED": "11",
    "FEED_RATE_HZ": "20",
    "FEED_SPEEDUP": "30",
    "RISK_MAX_ORDERS": "100000",
    "EXECUTION_RISK_POLL_MS": str(POLL_MS),
    "EXECUTION_RISK_POLL_TIMEOUT_MS": str(POLL_TIMEOUT_MS),
    # The push waits for execution's desk lock behind the submissions already queued for it;
    # on a loaded machine that can pass the 1 s default. What the push path guarantees is
    # checked here; how long it takes is measured by bench.halt_window.
    "RISK_STATE_PUSH_TIMEOUT_MS": "5000",
}
RESTING_LIMIT = "99.00"
"""Where the load's limit buys rest: the feed's crossing quote (ask 98.90) fills them."""
DEEP_LIMIT = "97.00"
"""Where the test's own resting buys wait: no feed quote reaches them, a test tick does."""


@dataclass
class Stack:
    running: dict[str, tuple[Proc, str]]
    proxy: ForwardingProxy
    """risk-safety's way to execution."""
    bot_proxy: ForwardingProxy
    """trading-bot's way to execution."""
    redis: str
    prefix: str
    quotes: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, name: str) -> str:
        return self.running[name][1]

    def alive(self, name: str) -> bool:
        return self.running[name][0].popen.poll() is None

    def fresh_quote(self) -> None:
        """Publish a calm BTCUSDT quote (never crossing a resting buy) and wait until both
        execution and risk-safety hold it, so a check and an order see the same market."""
        bid = Decimal("100.00") + Decimal(next(self.quotes) % 10) / 100
        ask = bid + Decimal("0.10")
        publish_ticks(self.redis, self.prefix, market_tick(str(bid), str(ask)))

        def seen() -> bool:
            at_execution = any(
                q["symbol"] == SYMBOL and Decimal(str(q["bid"])) == bid
                for q in http.get(f"{self.url('execution')}/quotes").json()
            )
            at_risk = any(
                q["symbol"] == SYMBOL and Decimal(str(q["bid"])) == bid
                for q in http.get(f"{self.url('risk-safety')}/state").json()["quotes"]
            )
            return at_execution and at_risk

        poll(seen, 10, f"execution and risk-safety to quote {SYMBOL} at {bid}", 0.02)

    def settle(self) -> None:
        """Wait until execution handled every tick published so far: a sentinel tick behind
        them is quoted (ticks of one stream are handled in order)."""
        sentinel = Decimal(time.time_ns() % 1_000_000 + 1)
        publish_ticks(
            self.redis, self.prefix, market_tick(str(sentinel), "10000000", symbol="SENTINEL")
        )
        poll(
            lambda: any(
                Decimal(str(q["bid"])) == sentinel
                for q in http.get(f"{self.url('execution')}/quotes").json()
            ),
            10,
            "execution to handle the sentinel tick",
            0.02,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("halt")
    execution_port = free_port()
    redis = redis_url
    with (
        ForwardingProxy(f"http://127.0.0.1:{execution_port}") as proxy,
        ForwardingProxy(f"http://127.0.0.1:{execution_port}") as bot_proxy,
    ):
        env = base_env(redis, None) | KNOBS
        per_service = {
            "risk-safety": {"EXECUTION_URL": proxy.url},
            "trading-bot": {"EXECUTION_URL": bot_proxy.url},
        }
        with services(
            SIX,
            tmp,
            env,
            per_service=per_service,
            ports={"execution": execution_port},
            timeout_s=90,
        ) as running:
            s = Stack(running, proxy, bot_proxy, redis, env["EVENTBUS_PREFIX"])
            poll(
                lambda: http.get(f"{s.url('execution')}/risk/state").json()["accepts"] == "ALL",
                20,
                "execution to adopt risk-safety's ACTIVE state",
            )
            s.fresh_quote()
            yield s


# The load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    kind: str
    check: dict[str, Any]
    status: int | None
    """POST /orders' status code, None when risk denied (nothing was sent)."""
    sent: float
    """When POST /orders was sent (monotonic), or the check answered if it was not."""
    at: float


def order_body(
    *, side: str, quantity: str, order_type: str = "MARKET", limit_price: str | None = None
) -> dict[str, Any]:
    return {
        "client_order_id": f"halt-{uuid.uuid4().hex[:16]}",
        "symbol": SYMBOL,
        "side": side,
        "quantity": quantity,
        "order_type": order_type,
        "limit_price": limit_price,
        "reduce_only": side == "SELL",
    }


def check(client: httpx.Client, s: Stack, body: dict[str, Any], price: str) -> dict[str, Any]:
    answer = client.post(f"{s.url('risk-safety')}/check", json={**body, "price": price})
    assert answer.status_code == 200, answer.text
    verdict: dict[str, Any] = answer.json()
    return verdict


def place(client: httpx.Client, s: Stack, body: dict[str, Any], approval: Any) -> httpx.Response:
    return client.post(f"{s.url('execution')}/orders", json={**body, "approval": approval})


class Load:
    """Threads submitting checked orders until stopped, over a feed of calm and crossing ticks."""

    KINDS = ("market_buy", "limit_buy", "reduce_sell")

    def __init__(self, s: Stack, threads: int = 3, pace_s: float = 0.02) -> None:
        self.s = s
        self.pace_s = pace_s
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._feed = TickFeed(s.redis, s.prefix)
        self._workers = [
            threading.Thread(target=self._work, args=(w,), daemon=True) for w in range(threads)
        ]

    def _work(self, worker: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5) as client:
            for n in itertools.count(worker):
                if self._stop.is_set():
                    return
                kind = self.KINDS[n % 3]
                if kind == "market_buy":
                    body, price = order_body(side="BUY", quantity="0.1"), "100.10"
                elif kind == "limit_buy":
                    body = order_body(
                        side="BUY", quantity="0.1", order_type="LIMIT", limit_price=RESTING_LIMIT
                    )
                    price = RESTING_LIMIT
                else:
                    body, price = order_body(side="SELL", quantity="0.01"), "100.00"
                verdict = check(client, self.s, body, price)
                status, sent = None, time.monotonic()
                if verdict["approved"]:
                    status = place(client, self.s, body, verdict["approval"]).status_code
                self.attempts.append(Attempt(kind, verdict, status, sent, time.monotonic()))
                time.sleep(self.pace_s)  # the load's pace, not a wait

    def __enter__(self) -> Load:
        self._feed.start()
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(10)
        self._feed.stop()

    def placed(self, kind: str, status: int) -> int:
        return sum(1 for a in self.attempts if a.kind == kind and a.status == status)


# Reading execution's data ---------------------------------------------------------------------


def orders(s: Stack) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = http.get(
        f"{s.url('execution')}/orders", params={"limit": 1000}
    ).json()["data"]
    assert len(data) < 1000, "more orders than one page: lower the load"
    return data


def increasing(order: dict[str, Any]) -> bool:
    """Could the order increase exposure (anything but a reduce-only sell)?"""
    return not (order["reduce_only"] and order["side"] == "SELL")


def fills_after(s: Stack, sequence: int, *, exposure_increasing: bool) -> list[dict[str, Any]]:
    return [
        {"client_order_id": o["client_order_id"], "symbol": o["symbol"], **f}
        for o in orders(s)
        if increasing(o) == exposure_increasing
        for f in o["fills"]
        if f["sequence"] > sequence
    ]


def risk_state(s: Stack) -> dict[str, Any]:
    state: dict[str, Any] = http.get(f"{s.url('execution')}/risk/state").json()
    return state


def ms(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp() * 1000)


def holding(s: Stack) -> Decimal:
    account = http.get(f"{s.url('execution')}/exposure").json()
    return Decimal(account["holdings"].get(SYMBOL, "0"))


def rest_deep_buys(s: Stack, count: int) -> list[str]:
    """Checked limit buys far under the market: they rest until a halt cancels them."""
    s.fresh_quote()
    coids = []
    for _ in range(count):
        body = order_body(side="BUY", quantity="0.1", order_type="LIMIT", limit_price=DEEP_LIMIT)
        verdict = check(http, s, body, DEEP_LIMIT)
        assert verdict["approved"], verdict
        placed = place(http, s, body, verdict["approval"])
        assert placed.status_code == 201 and placed.json()["status"] == "ACCEPTED", placed.text
        coids.append(body["client_order_id"])
    return coids


def bank_approvals(s: Stack) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Approvals obtained now and kept for later: two market buys and a reduce-only sell.
    (Called while the load's feed quotes the market.)"""
    banked = []
    for body, price in (
        (order_body(side="BUY", quantity="0.1"), "100.10"),
        (order_body(side="BUY", quantity="0.1"), "100.10"),
        (order_body(side="SELL", quantity="0.01"), "100.00"),
    ):
        verdict = check(http, s, body, price)
        assert verdict["approved"], verdict
        banked.append((body, verdict["approval"]))
    return banked


def resume(s: Stack, reason: str) -> dict[str, Any]:
    answer = http.post(
        f"{s.url('risk-safety')}/resume", json={"operator": "acceptance", "reason": reason}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    poll(
        lambda: (r := risk_state(s))["epoch"] == body["epoch"] and r["accepts"] == "ALL",
        10,
        "execution to adopt ACTIVE",
    )
    return body


def trade_once_more(s: Stack) -> None:
    """A new approval and a market buy that fills: trading works."""
    s.fresh_quote()
    body = order_body(side="BUY", quantity="0.1")
    verdict = check(http, s, body, "100.10")
    assert verdict["approved"], verdict
    placed = place(http, s, body, verdict["approval"])
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "FILLED", placed.json()


# The tests ------------------------------------------------------------------------------------


def test_a_halt_pushed_to_execution_stops_every_exposure_increasing_fill_at_once(
    stack: Stack,
) -> None:
    s = stack
    s.proxy.dropping = lambda _method, _path: False
    assert http.get(f"{s.url('risk-safety')}/state").json()["state"] == "ACTIVE"
    deep = rest_deep_buys(s, 3)
    with Load(s) as load:
        poll(
            lambda: load.placed("market_buy", 201) >= 3 and load.placed("limit_buy", 201) >= 3,
            15,
            "the load to place market and limit buys",
        )
        poll(lambda: holding(s) >= Decimal("0.05"), 10, f"a {SYMBOL} holding to sell from")
        banked = bank_approvals(s)
        halted = http.post(
            f"{s.url('risk-safety')}/kill-switch",
            json={"operator": "acceptance", "reason": "halt with orders in flight"},
        )
        # The load keeps submitting, and the feed keeps crossing, after the halt.
        halted_at = time.monotonic()
        poll(
            lambda: sum(1 for a in load.attempts if a.at > halted_at) >= 9,
            10,
            "orders submitted after the halt",
        )
    assert halted.status_code == 200, halted.text
    body = halted.json()
    assert body["state"] == "HALTED"
    assert body["execution"]["acknowledged"] is True, body["execution"]
    assert set(deep) <= set(body["execution"]["canceled"])

    state = risk_state(s)
    assert (state["state"], state["epoch"], state["source"]) == ("HALTED", body["epoch"], "push")
    adopted = state["adopted_fill_sequence"]
    # A tick deep enough to fill every resting buy, then the sentinel behind it.
    publish_ticks(s.redis, s.prefix, market_tick("79.90", "80.00"))
    s.settle()

    late = fills_after(s, adopted, exposure_increasing=True)
    assert late == [], f"exposure-increasing fills after the adoption (window not zero): {late}"
    book = {o["client_order_id"]: o for o in orders(s)}
    working = [
        o["client_order_id"]
        for o in book.values()
        if increasing(o) and o["status"] in ("NEW", "ACCEPTED", "PARTIALLY_FILLED")
    ]
    assert working == [], f"exposure-increasing orders still working while HALTED: {working}"
    for coid in deep:
        assert book[coid]["status"] == "CANCELED" and book[coid]["fills"] == [], book[coid]
    # Sent after execution acknowledged the halt: only reduce-only sells were accepted.
    accepted_after = [a for a in load.attempts if a.sent > halted_at and a.status == 201]
    assert all(a.kind == "reduce_sell" for a in accepted_after), accepted_after
    before = sum(1 for o in book.values() if increasing(o) for f in o["fills"])
    print(
        f"\nhalt by push: execution acknowledged and adopted epoch {state['epoch']} at fill "
        f"sequence {adopted}; {before} exposure-increasing fills before it, {len(late)} after "
        f"(window 0); {len(body['execution']['canceled'])} resting buys canceled; "
        f"{len(load.attempts)} checked submissions"
    )

    # Approvals obtained before the halt are revoked, exits included.
    for banked_body, approval in banked:
        refused = place(http, s, banked_body, approval)
        assert refused.status_code == 403, refused.text
        assert "revokes it" in refused.json()["detail"], refused.text

    # Risk denies a buy HALTED; a reduce-only sell of part of the holding is approved and fills.
    s.fresh_quote()
    buy = order_body(side="BUY", quantity="0.1")
    verdict = check(http, s, buy, "100.10")
    assert (verdict["approved"], verdict["reason"]) == (False, "HALTED"), verdict
    held = holding(s)
    assert held > 0
    sell = order_body(side="SELL", quantity=str(min(Decimal("0.01"), held)))
    verdict = check(http, s, sell, "100.00")
    assert verdict["approved"], verdict
    placed = place(http, s, sell, verdict["approval"])
    assert placed.status_code == 201 and placed.json()["status"] == "FILLED", placed.text
    assert placed.json()["fills"][0]["sequence"] > adopted

    resumed = resume(s, "halt test done")
    assert resumed["execution"]["acknowledged"] is True, resumed
    trade_once_more(s)


def test_a_halt_whose_push_is_lost_reaches_execution_by_its_poll_within_one_interval(
    stack: Stack,
) -> None:
    s = stack
    assert http.get(f"{s.url('risk-safety')}/state").json()["state"] == "ACTIVE"
    s.proxy.dropping = lambda method, path: method == "POST" and path == "/risk/state"
    dropped_before = len(s.proxy.dropped)
    try:
        deep = rest_deep_buys(s, 2)
        with Load(s) as load:
            poll(
                lambda: load.placed("market_buy", 201) >= 3 and load.placed("limit_buy", 201) >= 3,
                15,
                "the load to place market and limit buys",
            )
            halted = http.post(
                f"{s.url('risk-safety')}/kill-switch",
                json={"operator": "acceptance", "reason": "halt, push lost"},
            )
            assert halted.status_code == 200, halted.text
            body = halted.json()
            state = poll(
                lambda: (r := risk_state(s))["epoch"] == body["epoch"] and r,
                10,
                "execution to adopt the halt by polling",
                0.01,
            )
            adopted_at = time.monotonic()
            poll(
                lambda: sum(1 for a in load.attempts if a.at > adopted_at) >= 9,
                10,
                "orders submitted after the adoption",
            )
        assert body["state"] == "HALTED"
        assert body["execution"]["acknowledged"] is False, body["execution"]
        assert s.proxy.dropped[dropped_before:] == [("POST", "/risk/state")]
        assert (state["state"], state["source"]) == ("HALTED", "poll")
        # From risk-safety committing the halt to execution adopting it: at most one poll
        # interval plus one poll's timeout.
        lag_ms = state["adopted_at_ms"] - ms(body["changed_at"])
        assert 0 <= lag_ms <= POLL_MS + POLL_TIMEOUT_MS, lag_ms
        adopted = state["adopted_fill_sequence"]
        publish_ticks(s.redis, s.prefix, market_tick("79.90", "80.00"))
        s.settle()
        late = fills_after(s, adopted, exposure_increasing=True)
        assert late == [], f"exposure-increasing fills after the poll's adoption: {late}"
        book = {o["client_order_id"]: o for o in orders(s)}
        for coid in deep:
            assert book[coid]["status"] == "CANCELED" and book[coid]["fills"] == [], book[coid]
        print(
            f"\nhalt by poll alone (push dropped, EXECUTION_RISK_POLL_MS={POLL_MS}): adopted "
            f"{lag_ms} ms after risk-safety committed the halt, at fill sequence {adopted}; "
            f"{len(late)} exposure-increasing fills after it; {len(load.attempts)} submissions"
        )
    finally:
        s.proxy.dropping = lambda _method, _path: False
    resume(s, "poll test done")
    trade_once_more(s)


def bot_decisions(s: Stack, after_id: int) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = http.get(
        f"{s.url('trading-bot')}/decisions", params={"limit": 1000}
    ).json()["data"]
    return sorted((d for d in data if d["id"] > after_id), key=lambda d: d["id"])


def latest_decision_id(s: Stack) -> int:
    return max((d["id"] for d in bot_decisions(s, 0)), default=0)


def bot_bought(s: Stack, after_id: int) -> dict[str, Any] | None:
    for d in bot_decisions(s, after_id):
        if (d["outcome"], d["side"]) == ("ORDERED", "BUY"):
            return d
    return None


def buy_for_the_bot(s: Stack, notional: Decimal) -> None:
    """Market buys of the bot's symbols, so that it holds something to exit while halted
    (its own buys are small, and its exits sell all it holds)."""
    for quote in http.get(f"{s.url('execution')}/quotes").json():
        if quote["symbol"] not in BOT_SYMBOLS.split(","):
            continue
        ask = Decimal(str(quote["ask"]))
        body = {
            **order_body(side="BUY", quantity="1"),
            "symbol": quote["symbol"],
            "quantity": str((notional / ask).quantize(Decimal("0.0001"), ROUND_FLOOR)),
        }
        verdict = check(http, s, body, str(ask))
        assert verdict["approved"], verdict
        placed = place(http, s, body, verdict["approval"])
        assert placed.status_code == 201 and placed.json()["status"] == "FILLED", placed.text


def test_the_bot_records_each_halted_decision_without_spinning_and_trades_after_resume(
    stack: Stack,
) -> None:
    s = stack
    assert http.get(f"{s.url('risk-safety')}/state").json()["state"] == "ACTIVE"
    poll(lambda: bot_bought(s, 0), 30, "the bot to buy")
    buy_for_the_bot(s, Decimal(5000))

    # The bot's next buy reaches execution only after the halt: it carries a pre-halt approval.
    held: list[tuple[str, httpx.Response]] = []
    armed = [True]

    async def halt_first(method: str, path: str, body: bytes) -> None:
        if method != "POST" or path != "/orders" or not armed:
            return
        order = json.loads(body)
        if order["side"] != "BUY":
            return
        armed.clear()  # before awaiting: only this one order is held
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}) as c:
            answer = await c.post(
                f"{s.url('risk-safety')}/kill-switch",
                json={"operator": "acceptance", "reason": "halt under the bot's order"},
            )
        held.append((order["client_order_id"], answer))

    mark = latest_decision_id(s)
    marked_at = time.monotonic()
    s.bot_proxy.before = halt_first
    try:
        (coid, halted), *_ = poll(lambda: held, 30, "the bot to send a buy")
    finally:
        s.bot_proxy.before = None
    halted_at = time.monotonic()
    assert halted.status_code == 200 and halted.json()["state"] == "HALTED", halted.text

    # Execution refused the revoked approval; the bot asked risk-safety again and recorded
    # its answer, once.
    (decision,) = poll(
        lambda: [d for d in bot_decisions(s, mark) if d["client_order_id"] == coid],
        10,
        "the bot to record the refused buy",
    )
    assert (decision["outcome"], decision["reason"]) == ("DENIED", "HALTED"), decision
    assert "execution refused the first approval" in decision["detail"], decision
    assert "revokes it" in decision["detail"], decision
    assert http.get(f"{s.url('execution')}/orders/{coid}").status_code == 404

    # Every later buy is denied HALTED, one decision per symbol and interval at most.
    poll(
        lambda: (
            sum(
                1
                for d in bot_decisions(s, mark)
                if (d["outcome"], d["reason"]) == ("DENIED", "HALTED")
            )
            >= 4
        ),
        20,
        "the bot to record later buys denied HALTED",
    )
    # `during` holds every decision since the mark, the last ones before the halt included, so
    # the bound counts the intervals from the mark.
    elapsed_ms = (time.monotonic() - halted_at) * 1000
    during = bot_decisions(s, mark)
    symbols = len(BOT_SYMBOLS.split(","))
    bound = symbols * ((time.monotonic() - marked_at) * 1000 / DECISION_INTERVAL_MS + 2)
    assert len(during) <= bound, (len(during), bound, elapsed_ms)
    for d in during:
        assert d["outcome"] in ("DENIED", "SKIPPED", "ORDERED"), d
        if d["outcome"] == "DENIED":
            assert d["reason"] == "HALTED", d
        if d["outcome"] == "ORDERED" and d["side"] == "BUY":
            # A buy decided before the halt, whose order execution took before it.
            order = http.get(f"{s.url('execution')}/orders/{d['client_order_id']}").json()
            assert ms(order["created_at"]) <= ms(halted.json()["changed_at"]), (d, order)
    assert s.alive("trading-bot")
    assert http.get(f"{s.url('trading-bot')}/status").json()["running"] is True
    problems = [
        line
        for line in json_lines(s.running["trading-bot"][0])
        if line.get("level") in ("ERROR", "CRITICAL")
    ]
    assert problems == [], problems[:3]
    print(
        f"\nbot while halted: {len(during)} decisions in {elapsed_ms:.0f} ms over {symbols} "
        f"symbols (interval {DECISION_INTERVAL_MS} ms), "
        f"{sum(1 for d in during if d['reason'] == 'HALTED')} denied HALTED"
    )

    # The bot's next exit reaches execution only after the resume, with an approval of the
    # halted epoch: refused as revoked, checked again, placed.
    resumed: list[tuple[str, httpx.Response]] = []
    armed.append(True)

    async def resume_first(method: str, path: str, body: bytes) -> None:
        if method != "POST" or path != "/orders" or not armed:
            return
        armed.clear()
        order = json.loads(body)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}) as c:
            answer = await c.post(
                f"{s.url('risk-safety')}/resume",
                json={"operator": "acceptance", "reason": "resume under the bot's exit"},
            )
        resumed.append((order["client_order_id"], answer))

    s.bot_proxy.before = resume_first
    try:
        (coid, answer), *_ = poll(lambda: resumed, 30, "the bot to send an exit while halted")
    finally:
        s.bot_proxy.before = None
    assert answer.status_code == 200 and answer.json()["state"] == "ACTIVE", answer.text
    mark = latest_decision_id(s)
    (decision,) = poll(
        lambda: [d for d in bot_decisions(s, 0) if d["client_order_id"] == coid],
        10,
        "the bot to record the exit",
    )
    assert (decision["outcome"], decision["side"]) == ("ORDERED", "SELL"), decision
    assert "revokes it" in decision["detail"], decision
    exit_order = http.get(f"{s.url('execution')}/orders/{coid}").json()
    assert exit_order["reduce_only"] is True and exit_order["status"] == "FILLED", exit_order
    try:
        # A liveness wait: the bot buys on its model's next BUY signal, which a busy machine
        # can delay; the decisions are printed if it never comes.
        # Risk values every open position at a fresh quote: the earlier tests of this stack
        # left positions in symbols the feed does not tick (their own test ticks), so their
        # latest quotes are published again, restamped, while the bot is waited for.
        stale = [
            q
            for q in http.get(f"{s.url('execution')}/quotes").json()
            if q["symbol"] not in BOT_SYMBOLS.split(",")
        ]

        def bought_with_fresh_quotes() -> dict[str, Any] | None:
            for q in stale:
                publish_ticks(s.redis, s.prefix, market_tick(q["bid"], q["ask"], q["symbol"]))
            return bot_bought(s, mark)

        bought = poll(bought_with_fresh_quotes, 60, "the bot to buy again after the resume", 0.5)
    except AssertionError as exc:
        since = [(d["side"], d["outcome"], d["reason"]) for d in bot_decisions(s, mark)]
        raise AssertionError(f"{exc}; the bot's decisions since: {since[-12:]}") from None
    placed = http.get(f"{s.url('execution')}/orders/{bought['client_order_id']}").json()
    assert placed["status"] in ("FILLED", "ACCEPTED", "PARTIALLY_FILLED"), placed
