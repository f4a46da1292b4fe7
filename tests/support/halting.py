"""Halting execution while orders are in flight: what filled after the halt, and how late.

`run_halt` drives a running execution (in-process or a real process, through any httpx
client) with several threads submitting marketable buys, resting buys and reduce-only exits,
and a feed of ticks that keeps crossing the resting buys; halfway it halts trading, by a push
and a poll (`mode="push"`, risk-safety's way) or by the poll alone (`mode="poll"`, as when the
push is lost), keeps the load going after execution adopted the halt, then reads every fill.
The test suite asserts on the result; `bench/halt_window.py` prints it over many runs.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import httpx

from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.trading.approval import DEVELOPMENT_SECRET, sign_approval
from backend.trading.events import MarketTick
from backend.trading.types import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
)
from tests.support.factories import market_tick, now_ms
from tests.support.polling import wait_until
from tests.support.riskstub import RiskStub

SYMBOL = "BTCUSDT"
CALM = ("100.00", "100.10")
"""A quote that leaves the resting buys (at 99.00) alone."""
CROSSING = ("98.80", "98.90")
"""A quote whose ask is under the resting buys' limit: every one of them fills."""


class TickFeed(threading.Thread):
    """Publishes ticks of SYMBOL until stopped, alternating CALM and CROSSING quotes."""

    def __init__(self, redis_url: str, prefix: str, interval_s: float = 0.02) -> None:
        super().__init__(name="tick-feed", daemon=True)
        self._redis_url = redis_url
        self._prefix = prefix
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self.published = 0

    def run(self) -> None:
        asyncio.run(self._feed())

    async def _feed(self) -> None:
        client = create_redis_client(self._redis_url)
        publisher = EventPublisher(client, "tick-feed", EventBusSettings(prefix=self._prefix))
        try:
            for quote in itertools.cycle((CALM, CROSSING)):
                if self._stopping.is_set():
                    return
                await publisher.publish(market_tick(*quote))
                self.published += 1
                await asyncio.sleep(self._interval_s)  # the feed's pace, not a wait
        finally:
            await client.aclose()

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


def publish_ticks(redis_url: str, prefix: str, *ticks: MarketTick) -> None:
    """Publish `ticks` as the market-data feed would."""

    async def send() -> None:
        client = create_redis_client(redis_url)
        try:
            await EventPublisher(client, "test", EventBusSettings(prefix=prefix)).publish_many(
                ticks
            )
        finally:
            await client.aclose()

    asyncio.run(send())


def approved_order(
    cid: str,
    *,
    side: str,
    quantity: str,
    epoch: int,
    order_type: str = "MARKET",
    limit_price: str | None = None,
    reduce_only: bool = False,
    secret: str = DEVELOPMENT_SECRET,
) -> dict[str, Any]:
    """An order body with the approval risk-safety would give it in `epoch`."""
    request = OrderRequest(
        ClientOrderId(cid),
        Symbol(SYMBOL),
        Side(side),
        Decimal(quantity),
        OrderType(order_type),
        Decimal(limit_price) if limit_price else None,
        TimeInForce.GTC,
        reduce_only,
    )
    approval = sign_approval(
        secret, decision_id=f"d-{cid}", order=request, epoch=epoch, expires_ms=now_ms() + 30_000
    )
    return {
        "client_order_id": cid,
        "symbol": SYMBOL,
        "side": side,
        "quantity": quantity,
        "order_type": order_type,
        "limit_price": limit_price,
        "reduce_only": reduce_only,
        "approval": {
            "decision_id": approval.decision_id,
            "token": approval.token,
            "expires_ms": approval.expires_ms,
            "epoch": approval.epoch,
        },
    }


@dataclass
class HaltResult:
    """What one halted run showed. Times are wall-clock ms on this machine."""

    mode: str
    halted_at_ms: int
    """When risk-safety halted (push mode: when it decided, before pushing)."""
    adopted_at_ms: int
    """When execution adopted the halt."""
    adopted_fill_sequence: int
    """The highest venue fill sequence at that moment."""
    submitted: int
    increasing_fills_before: int
    late_increasing_fills: list[dict[str, Any]]
    """Fills of exposure-increasing orders with a sequence after the adoption (must be none)."""
    reducing_fills_after: int
    refused_after: int
    """Exposure-increasing submissions refused (403) once the halt was adopted."""
    last_increasing_fill_ms: int | None
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def adoption_lag_ms(self) -> int:
        """From the halt to its adoption by execution: the bound of the window."""
        return self.adopted_at_ms - self.halted_at_ms

    @property
    def window_ms(self) -> int:
        """From the halt to the last exposure-increasing fill (0 if none came after it)."""
        if self.last_increasing_fill_ms is None:
            return 0
        return max(0, self.last_increasing_fill_ms - self.halted_at_ms)


def _increasing(order: dict[str, Any]) -> bool:
    return not (order["reduce_only"] and order["side"] == "SELL")


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def run_halt(
    client: httpx.Client,
    risk: RiskStub,
    *,
    redis_url: str,
    prefix: str,
    mode: Literal["push", "poll"],
    threads: int = 4,
    warmup_s: float = 0.5,
    after_s: float = 0.4,
    pace_s: float = 0.01,
) -> HaltResult:
    """Halt `client`'s execution (open, ACTIVE, no orders yet) while orders are in flight."""
    start_epoch = risk.epoch
    publish_ticks(redis_url, prefix, market_tick(*CALM))
    wait_until(lambda: client.get("/quotes").json(), 10, "the first quote", 0.01)
    stop = threading.Event()
    outcomes: list[tuple[str, bool, int, float]] = []  # cid, increasing, status, monotonic
    adopted_at_s: list[float] = []

    def submit(worker: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            cid = f"w{worker}-{n}"
            kind = n % 4
            if kind == 3:  # an exit, approved in whatever epoch risk-safety is in
                body = approved_order(
                    cid, side="SELL", quantity="0.01", epoch=risk.epoch, reduce_only=True
                )
            else:
                # Approvals issued before the halt (in flight when it comes) and, as a
                # risk-safety that kept approving would issue, in the halted epoch. 0.1 at about
                # 100 clears the instrument's minimum notional of 5.
                epoch = start_epoch if n % 2 == 0 else risk.epoch
                if kind == 0:
                    body = approved_order(cid, side="BUY", quantity="0.1", epoch=epoch)
                else:
                    body = approved_order(
                        cid,
                        side="BUY",
                        quantity="0.1",
                        epoch=epoch,
                        order_type="LIMIT",
                        limit_price="99.00",
                    )
            status = client.post("/orders", json=body).status_code
            outcomes.append((cid, kind != 3, status, time.monotonic()))
            time.sleep(pace_s)  # the load's pace, not a wait

    feed = TickFeed(redis_url, prefix)
    workers = [
        threading.Thread(target=submit, args=(w,), name=f"submit-{w}", daemon=True)
        for w in range(threads)
    ]
    feed.start()
    for worker in workers:
        worker.start()
    try:
        time.sleep(warmup_s)  # orders flow and fill before the halt
        target = start_epoch + 1
        if mode == "push":
            signed = risk.next("HALTED")
            halted_at_ms = now_ms()
            pushed = client.post("/risk/state", json=risk.push_body(signed, reason="halt"))
            if pushed.status_code != 200:
                raise AssertionError(f"push refused: {pushed.status_code} {pushed.text}")
            risk.serve(signed)
        else:
            risk.change("HALTED")
            halted_at_ms = risk.changed_at_ms
        state = wait_until(
            lambda: (s := client.get("/risk/state").json())["epoch"] == target and s,
            10,
            "execution to adopt the halt",
            0.01,
        )
        adopted_at_s.append(time.monotonic())
        time.sleep(after_s)  # orders keep coming after the halt was adopted
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        feed.stop()
    # A sentinel tick behind the feed's last one: once it is quoted, every tick was handled.
    sentinel = str(now_ms() % 100_000 + 1)
    publish_ticks(redis_url, prefix, market_tick(sentinel, "1000000", symbol="SENTINEL"))
    wait_until(
        lambda: any(q["bid"] == sentinel for q in client.get("/quotes").json()),
        10,
        "the sentinel",
        0.01,
    )

    orders = client.get("/orders", params={"limit": 1000}).json()["data"]
    if len(orders) >= 1000:
        raise AssertionError("more than 1000 orders: lower the load (threads, pace_s)")
    adopted_sequence = state["adopted_fill_sequence"]
    increasing = [(o, f) for o in orders if _increasing(o) for f in o["fills"]]
    late = [
        {"client_order_id": o["client_order_id"], **f}
        for o, f in increasing
        if f["sequence"] > adopted_sequence
    ]
    reducing_after = sum(
        1
        for o in orders
        if not _increasing(o)
        for f in o["fills"]
        if f["sequence"] > adopted_sequence
    )
    statuses: dict[int, int] = {}
    for _cid, _increases, status, _at in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    return HaltResult(
        mode=mode,
        halted_at_ms=halted_at_ms,
        adopted_at_ms=state["adopted_at_ms"],
        adopted_fill_sequence=adopted_sequence,
        submitted=len(outcomes),
        increasing_fills_before=sum(1 for _o, f in increasing if f["sequence"] <= adopted_sequence),
        late_increasing_fills=late,
        reducing_fills_after=reducing_after,
        refused_after=sum(
            1
            for _cid, increases, status, at in outcomes
            if increases and status == 403 and at > adopted_at_s[0]
        ),
        last_increasing_fill_ms=max((_ms(f["filled_at"]) for _o, f in increasing), default=None),
        statuses=statuses,
    )
