"""portfolio-intelligence through the bus and its HTTP API: booking, PnL, rebuild, analytics."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import event as sa_event

from backend.infra.db import DatabaseError
from backend.infra.eventbus import EventBusSettings, Idempotency, create_redis_client
from backend.trading.events import MarketTick, OrderFilled
from backend.trading.types import Fill
from microservices.portfolio_intelligence.service import create_service
from microservices.portfolio_intelligence.store import Booking, LedgerStore
from tests.support.factories import fill_event
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

D = Decimal
INITIAL = D(100_000)


def booked(client: TestClient, count: int) -> bool:
    return client.get("/fills").json()["count"] >= count


def portfolio(client: TestClient) -> dict[str, Any]:
    return client.get("/portfolio").json()  # type: ignore[no-any-return]


def test_a_redelivered_fill_is_booked_once(harness: ServiceHarness) -> None:
    with harness.run(create_service) as client:
        first = fill_event("o1-1", "BUY", "1", "100", "0.1")
        harness.publish(first, event_id="evt-1")
        harness.publish(first, event_id="evt-1")  # the bus delivering the same event again
        harness.publish(first, event_id="evt-2")  # the producer publishing the fill twice
        harness.publish(fill_event("o2-1", "BUY", "2", "100", "0.2"))
        # A sentinel on another symbol, published last: fills are handled one at a time in
        # stream order, so once its position update is out, every duplicate has been handled.
        harness.publish(fill_event("s1-1", "BUY", "1", "2000", "0.2", symbol="ETHUSDT"))
        wait_until(
            lambda: any(u["symbol"] == "ETHUSDT" for u in harness.published("position.updated")),
            what="the sentinel's position update",
        )

        assert client.get("/fills").json()["count"] == 3
        (position,) = [p for p in portfolio(client)["positions"] if p["symbol"] == "BTCUSDT"]
        assert D(position["quantity"]) == 3
        updates = harness.published("position.updated")
        assert [D(u["quantity"]) for u in updates if u["symbol"] == "BTCUSDT"] == [1, 3]


def test_pnl_after_a_buy_and_a_partial_sell_matches_an_independent_computation(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        harness.publish(
            fill_event("b-1", "BUY", "2", "100.00", "0.20"),
            fill_event("b-2", "BUY", "1", "106.00", "0.106"),
            fill_event("s-1", "SELL", "1.5", "110.00", "0.165"),
            MarketTick(
                symbol="BTCUSDT",
                bid=D("104.90"),
                ask=D("105.10"),
                last=D("105"),
                volume=D(10),
                ts_ms=time.time_ns() // 1_000_000,
            ),
        )
        wait_until(
            lambda: (
                (p := portfolio(client))["positions"]
                and p["positions"][0]["mark"] == "105.00"
                and p
            ),
            what="the fills and the mark",
        )
        p = portfolio(client)

    # By hand: average cost of 3 @ (200 + 106) / 3 = 102; selling 1.5 @ 110 realizes 1.5 * 8.
    avg = (D("200.00") + D("106.00")) / 3
    realized = D("1.5") * (D("110.00") - avg)
    unrealized = D("1.5") * (D("105.00") - avg)
    fees = D("0.20") + D("0.106") + D("0.165")
    cash = INITIAL - D("200.00") - D("106.00") + D("165.00") - fees
    position = p["positions"][0]
    assert D(position["quantity"]) == D("1.5")
    assert D(position["avg_price"]) == avg
    assert D(position["realized_pnl"]) == realized
    assert D(p["realized_pnl"]) == realized
    assert D(p["unrealized_pnl"]) == pytest.approx(unrealized, abs=D("1e-9"))
    assert D(p["fees"]) == fees
    assert D(p["cash"]) == cash
    assert D(p["equity"]) == cash + D("1.5") * D("105.00")
    assert D(p["equity"]) - INITIAL == pytest.approx(realized + unrealized - fees, abs=D("1e-9"))
    assert D(p["gross_exposure"]) == D("1.5") * D("105.00")


def test_the_portfolio_has_the_shape_risk_safety_reads(harness: ServiceHarness) -> None:
    with harness.run(create_service) as client:
        p = wait_until(lambda: (p := portfolio(client))["as_of_ms"] > 0 and p, what="a first check")
    assert isinstance(p["as_of_ms"], int)
    assert abs(p["as_of_ms"] - time.time() * 1000) < 60_000
    assert p["marks_as_of_ms"] is None  # no tick and no fill yet
    assert p["fills"] == {
        "booked_sequence": 0,
        "max_sequence": 0,
        "gaps": [],
        "pending": 0,
        "lag": 0,
        "dead_letters": 0,
        "complete_as_of_ms": p["as_of_ms"],
        "problems": [],
    }
    for key in (
        "cash",
        "equity",
        "peak_equity",
        "day_start_equity",
        "daily_pnl",
        "realized_pnl",
        "unrealized_pnl",
        "fees",
        "gross_exposure",
        "net_exposure",
    ):
        assert isinstance(p[key], str), key
        D(p[key])
    assert D(p["cash"]) == D(p["equity"]) == D(p["peak_equity"]) == INITIAL
    assert p["positions"] == []


def test_a_restart_rebuilds_the_portfolio_from_the_ledger(harness: ServiceHarness) -> None:
    with harness.run(create_service) as client:
        harness.publish(
            fill_event("r-1", "BUY", "2", "100", "0.2"),
            fill_event("r-2", "SELL", "1", "120", "0.12", symbol="BTCUSDT"),
            fill_event("r-3", "BUY", "5", "10", "0.05", symbol="ETHUSDT"),
        )
        wait_until(lambda: booked(client, 3), what="three fills booked")
        before = portfolio(client)

    with harness.run(create_service) as client:
        after = portfolio(client)
        for key in ("cash", "realized_pnl", "fees", "equity"):
            assert D(after[key]) == D(before[key]), key
        assert [(q["symbol"], D(q["quantity"])) for q in after["positions"]] == [
            ("BTCUSDT", D(1)),
            ("ETHUSDT", D(5)),
        ]
        # The ledger still refuses the old fills after the restart.
        harness.publish(
            fill_event("r-1", "BUY", "2", "100", "0.2"), fill_event("r-4", "SELL", "1", "121", "0")
        )
        wait_until(lambda: booked(client, 4), what="the new fill booked")
        assert client.get("/fills").json()["count"] == 4


def test_the_equity_curve_and_performance_are_served(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EQUITY_SAMPLE_S", "0.05")
    with harness.run(create_service) as client:
        harness.publish(
            fill_event("e-1", "BUY", "1", "100", "0"), fill_event("e-2", "SELL", "1", "101", "0")
        )
        wait_until(lambda: booked(client, 2), what="fills booked")
        curve = wait_until(
            lambda: (c := client.get("/equity-curve").json())["count"] >= 3 and c,
            what="three equity points",
        )
        assert curve["sample_s"] == 0.05
        assert D(curve["data"][-1]["equity"]) == INITIAL + 1
        performance = client.get("/performance").json()
        assert performance["trades"] == 1
        assert D(performance["win_rate"]) == 1
        assert performance["points"] >= 3
        assert D(performance["max_drawdown"]) >= 0
        metrics = client.get("/metrics").text
        assert "portfolio_equity 100001.0" in metrics


# Two buys then a sell: average cost makes the sell's realized PnL depend on whether the second
# buy came before it (the venue's order) or after it.
VENUE_FILLS = [
    ("BUY", "1", "100", "0.10"),
    ("BUY", "1", "110", "0.11"),
    ("SELL", "1", "120", "0.12"),
]


def venue_fills(symbol: str, first_sequence: int) -> list[OrderFilled]:
    return [
        fill_event(f"{symbol}-{n}-1", side, qty, price, fee, symbol, sequence=first_sequence + n)
        for n, (side, qty, price, fee) in enumerate(VENUE_FILLS)
    ]


def in_sequence_order() -> dict[str, Decimal]:
    """The position VENUE_FILLS leave, recomputed by hand in their sequence order."""
    quantity, cost, realized = D(0), D(0), D(0)
    for side, qty, price, _fee in VENUE_FILLS:
        q, p = D(qty), D(price)
        if side == "BUY":
            quantity, cost = quantity + q, cost + q * p
        else:
            average = cost / quantity
            realized += q * (p - average)
            quantity, cost = quantity - q, cost - q * average
    fees = sum((D(f) for *_, f in VENUE_FILLS), D(0))
    last_price = D(VENUE_FILLS[-1][2])
    return {
        "quantity": quantity,
        "avg_price": cost / quantity,
        "realized_pnl": realized,
        "unrealized_pnl": quantity * last_price - cost,
        "fees": fees,
        "mark": last_price,
    }


def position_of(client: TestClient, symbol: str) -> dict[str, Decimal]:
    position = next(p for p in portfolio(client)["positions"] if p["symbol"] == symbol)
    return {k: D(v) for k, v in position.items() if k != "symbol"}


def out_of_order_fills() -> float:
    return REGISTRY.get_sample_value("portfolio_out_of_order_fills_total") or 0.0


def test_the_fills_of_one_read_are_booked_in_one_transaction(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bookings: list[int] = []
    booking = LedgerStore.booking

    def counted(self: LedgerStore, *args: Any, **kwargs: Any) -> Any:
        bookings.append(1)
        return booking(self, *args, **kwargs)

    monkeypatch.setattr(LedgerStore, "booking", counted)
    fills = venue_fills("BTCUSDT", 1) + venue_fills("ETHUSDT", 4)
    with harness.run(create_service) as client:
        harness.publish(*fills)  # one XADD script: one read returns them all
        wait_until(lambda: booked(client, 6), what="six fills booked")
        assert position_of(client, "BTCUSDT") == in_sequence_order()
        assert position_of(client, "ETHUSDT") == in_sequence_order()
        updates = harness.published("position.updated")
    assert bookings == [1]
    assert [u["client_order_id"] for u in updates] == [f.client_order_id for f in fills]


def test_the_fills_of_one_read_take_one_insert_per_table(harness: ServiceHarness) -> None:
    fills = venue_fills("BTCUSDT", 1) + venue_fills("ETHUSDT", 4)
    inserts: list[str] = []
    position_reads: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement.split("(")[0].split()[-1].strip('"'))
        elif statement.lstrip().upper().startswith("SELECT") and "FROM positions" in statement:
            position_reads.append(statement)

    with harness.run(create_service) as client:
        engine = client.app.state.resources.engine.sync_engine  # type: ignore[attr-defined]
        sa_event.listen(engine, "before_cursor_execute", executed)
        try:
            harness.publish(*fills)  # one XADD script: one read returns them all
            wait_until(lambda: booked(client, 6), what="six fills booked")
        finally:
            sa_event.remove(engine, "before_cursor_execute", executed)
        updates = harness.published("position.updated")
    # Six ledger rows and six position updates: one statement each, not one per row (and
    # each symbol's first position row).
    assert Counter(inserts) == {"ledger_fills": 1, "outbox_events": 1, "positions": 2}, inserts
    assert position_reads == []  # a position is written as memory holds it, not read first
    assert len(updates) == 6


def test_fills_delivered_out_of_order_are_booked_in_the_venue_order(
    harness: ServiceHarness,
) -> None:
    expected = in_sequence_order()
    assert expected["realized_pnl"] == 15  # 120 - (100 + 110) / 2; out of order it would be 20
    late = venue_fills("BTCUSDT", 1)
    in_order = venue_fills("ETHUSDT", 4)
    before = out_of_order_fills()
    with harness.run(create_service) as client:
        harness.publish(late[0], late[2], late[1], *in_order)  # sequence 2 after sequence 3
        wait_until(lambda: booked(client, 6), what="six fills booked")

        assert position_of(client, "BTCUSDT") == expected
        assert position_of(client, "ETHUSDT") == expected
        assert out_of_order_fills() == before + 1
        fills = client.get("/fills", params={"symbol": "BTCUSDT"}).json()["data"]
        assert [f["sequence"] for f in fills] == [2, 3, 1]  # newest booking first
        update = harness.published("position.updated")[2]
        assert (D(update["average_price"]), D(update["realized_pnl"])) == (D(105), D(15))
        p = portfolio(client)

    cash = INITIAL + 2 * (D(-100) - 110 + 120) - 2 * expected["fees"]
    assert D(p["cash"]) == cash
    assert D(p["realized_pnl"]) == 2 * expected["realized_pnl"]
    assert D(p["equity"]) == cash + 2 * expected["quantity"] * expected["mark"]

    with harness.run(create_service) as client:
        # The rebuild replays the ledger in sequence order too, not in booking order.
        assert position_of(client, "BTCUSDT") == expected
        assert D(portfolio(client)["realized_pnl"]) == 2 * expected["realized_pnl"]


def test_a_fill_retried_after_a_failed_booking_is_booked_in_the_venue_order(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    fills = venue_fills("BTCUSDT", 1)
    book = Booking.add
    failed: list[str] = []

    async def fail_once(self: Booking, f: Fill, *args: Any) -> int:
        if f.fill_id == fills[1].fill_id and not failed:
            failed.append(f.fill_id)
            raise DatabaseError("connection lost")
        return await book(self, f, *args)

    async def fail_in_a_batch(self: Booking, rows: Sequence[tuple[Fill, Any]], *args: Any) -> int:
        # A batch holding it fails as a whole: the bus hands its fills over one at a time.
        if any(f.fill_id == fills[1].fill_id for f, _sequence in rows):
            raise DatabaseError("connection lost")
        return await book_many(self, rows, *args)

    book_many = Booking.add_many
    monkeypatch.setattr(Booking, "add", fail_once)
    monkeypatch.setattr(Booking, "add_many", fail_in_a_batch)
    before = out_of_order_fills()
    with harness.run(create_service) as client:
        harness.publish(*fills)
        wait_until(lambda: booked(client, 3), what="three fills booked")

        assert failed == [fills[1].fill_id]
        booking_order = [f["sequence"] for f in client.get("/fills").json()["data"]][::-1]
        assert booking_order == [1, 3, 2]  # the bus retried sequence 2 after booking 3
        assert out_of_order_fills() == before + 1
        assert position_of(client, "BTCUSDT") == in_sequence_order()


# --- duplicates after a restart (audit F9) ----------------------------------------------------


def duplicates() -> float:
    return REGISTRY.get_sample_value("portfolio_duplicate_fills_total") or 0.0


def conflicts() -> float:
    return REGISTRY.get_sample_value("portfolio_conflicting_fills_total") or 0.0


def dead_letters(harness: ServiceHarness) -> list[Any]:
    key = EventBusSettings(prefix=harness.prefix).dead_letter_key("order.filled")
    client = redis.Redis.from_url(harness.redis_url)
    try:
        entries: list[Any] = client.xrange(key)  # type: ignore[assignment]
        return entries
    finally:
        client.close()


def books(p: dict[str, Any]) -> tuple[object, ...]:
    return (
        p["cash"],
        p["realized_pnl"],
        p["fees"],
        [(q["symbol"], q["quantity"]) for q in p["positions"]],
    )


def test_a_maker_fill_redelivered_after_a_restart_is_a_duplicate(harness: ServiceHarness) -> None:
    maker = fill_event("m-1", "BUY", "1", "100", "0.05", sequence=1, liquidity="MAKER")
    with harness.run(create_service) as client:
        harness.publish(maker, event_id="evt-1")
        wait_until(lambda: booked(client, 1), what="the maker fill booked")
        assert client.get("/fills").json()["data"][0]["liquidity"] == "MAKER"
        before = books(portfolio(client))

    with harness.run(create_service) as client:
        dropped = duplicates()
        # The same fill under another event id: what a crash between commit and ack leaves.
        harness.publish(maker, event_id="evt-2")
        wait_until(lambda: duplicates() == dropped + 1, what="the copy dropped as a duplicate")
        assert books(portfolio(client)) == before
        # A later fill is booked after it, and nothing went to the dead-letter stream.
        harness.publish(fill_event("m-2", "SELL", "1", "101", "0.05", sequence=2), event_id="evt-3")
        wait_until(lambda: booked(client, 2), what="the fill after it booked")
        p = wait_until(lambda: not (p := portfolio(client))["fills"]["problems"] and p)
        assert dead_letters(harness) == []
        assert p["fills"]["booked_sequence"] == 2 and p["fills"]["dead_letters"] == 0

    assert before == (str(INITIAL - D(100) - D("0.05")), "0", "0.05", [("BTCUSDT", "1")])
    assert D(p["cash"]) == INITIAL - D(100) - D("0.05") + D(101) - D("0.05")
    assert D(p["realized_pnl"]) == 1


def test_a_fill_booked_before_liquidity_was_kept_takes_a_copy_of_any_liquidity_as_a_duplicate(
    harness: ServiceHarness,
) -> None:
    maker = fill_event("l-1", "BUY", "1", "100", "0.05", sequence=1, liquidity="MAKER")
    with harness.run(create_service) as client:
        harness.publish(maker, event_id="evt-1")
        wait_until(lambda: booked(client, 1), what="the fill booked")
    # What a row booked before revision 0006 looks like.
    with sqlite3.connect(harness.database_url.split("///", 1)[1]) as db:
        db.execute("UPDATE ledger_fills SET liquidity = NULL")

    with harness.run(create_service) as client:
        dropped = duplicates()
        harness.publish(maker, event_id="evt-2")
        wait_until(lambda: duplicates() == dropped + 1, what="the copy dropped as a duplicate")
        assert client.get("/fills").json()["data"][0]["liquidity"] is None
        assert D(portfolio(client)["positions"][0]["quantity"]) == 1


def test_a_fill_with_a_booked_id_and_other_economics_is_a_conflict_after_a_restart(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTBUS_RETRY_BACKOFF_MS", "10")
    monkeypatch.setenv("EVENTBUS_RETRY_BACKOFF_MAX_MS", "40")
    with harness.run(create_service) as client:
        harness.publish(fill_event("x-1", "BUY", "1", "100", "0.05", sequence=1), event_id="evt-1")
        wait_until(lambda: booked(client, 1), what="the fill booked")
        before = books(portfolio(client))

    with harness.run(create_service) as client:
        seen = conflicts()
        harness.publish(fill_event("x-1", "BUY", "2", "100", "0.05", sequence=1), event_id="evt-2")
        wait_until(lambda: len(dead_letters(harness)) == 1, what="the conflict dead-lettered")
        assert conflicts() > seen
        dead = dead_letters(harness)[0][1]
        assert b"ConflictingFill" in dead[b"error"] and b"quantity 1 != 2" in dead[b"error"]
        p = wait_until(lambda: (p := portfolio(client))["fills"]["dead_letters"] == 1 and p)
        assert books(p) == before
        assert "dead_letters" in p["fills"]["problems"]


def test_a_position_update_is_committed_with_its_ledger_row_and_published_from_the_outbox(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        harness.publish(fill_event("ob-1", "BUY", "2", "100", "0.2"))
        wait_until(lambda: harness.published("position.updated"), what="the position update")
        assert client.get("/fills").json()["count"] == 1
    path = harness.database_url.split(":///", 1)[1]
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT event_type, published_at IS NOT NULL FROM outbox_events WHERE source = ?",
            ("portfolio-intelligence",),
        ).fetchall()
    assert rows == [("position.updated", 1)]
    (update,) = harness.published("position.updated")
    assert D(update["quantity"]) == 2


def _mark_processed(harness: ServiceHarness, event_id: str) -> None:
    async def mark() -> None:
        client = create_redis_client(harness.redis_url)
        try:
            settings = EventBusSettings(prefix=harness.prefix)
            await Idempotency(client, "portfolio-intelligence", settings).mark_many([event_id])
        finally:
            await client.aclose()

    asyncio.run(mark())


def test_a_tick_delivered_twice_marks_nothing_more_than_once(harness: ServiceHarness) -> None:
    """Ticks are read without processed marks (a tick whose id is marked still marks the book),
    and a copy of a tick (its event id again, as a retried publication leaves) that comes after
    a newer tick does not move the mark back."""
    ts_ms = time.time_ns() // 1_000_000

    def tick(symbol: str, mid: str, ts: int) -> MarketTick:
        return MarketTick(
            symbol=symbol,
            bid=D(mid) - D("0.1"),
            ask=D(mid) + D("0.1"),
            last=D(mid),
            volume=D(10),
            ts_ms=ts,
        )

    def mark(client: TestClient, symbol: str) -> D | None:
        for p in portfolio(client)["positions"]:
            if p["symbol"] == symbol and p["mark"] is not None:
                return D(p["mark"])
        return None

    with harness.run(create_service) as client:
        harness.publish(
            fill_event("m-1", "BUY", "1", "100", "0.1"),
            fill_event("m-2", "BUY", "1", "2000", "0.1", symbol="ETHUSDT"),
        )
        wait_until(lambda: booked(client, 2), what="the fills")
        _mark_processed(harness, "tick-a")
        harness.publish(tick("BTCUSDT", "105", ts_ms), event_id="tick-a")
        wait_until(lambda: mark(client, "BTCUSDT") == 105, what="the marked tick's mark")
        harness.publish(tick("BTCUSDT", "106", ts_ms + 1), event_id="tick-b")
        harness.publish(tick("BTCUSDT", "105", ts_ms), event_id="tick-a")
        # A sentinel on another symbol, published last: ticks are handled in stream order.
        harness.publish(tick("ETHUSDT", "2100", ts_ms + 1))
        wait_until(lambda: mark(client, "ETHUSDT") == 2100, what="the sentinel's mark")
        assert mark(client, "BTCUSDT") == 106
