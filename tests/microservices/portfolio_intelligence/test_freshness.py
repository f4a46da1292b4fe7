"""portfolio-intelligence's freshness follows the fill stream (real Redis stream and group).

`as_of_ms` is the last time the books were known to hold every fill on `order.filled`; ticks
only move `marks_as_of_ms`. Checks of the stream run every FILLS_CHECK_INTERVAL_MS (20 ms here);
"this did not happen" is asserted after a check that started later than the events.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from backend.infra.db import DatabaseError
from backend.infra.eventbus import GroupMonitor, create_redis_client
from backend.trading.events import MarketTick
from backend.trading.types import Fill
from microservices.portfolio_intelligence.book import PortfolioBook
from microservices.portfolio_intelligence.service import create_service
from microservices.portfolio_intelligence.store import Booking, LedgerStore
from tests.support.factories import fill_event, now_ms
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.procs import free_port

from .test_portfolio import booked, portfolio

D = Decimal


@pytest.fixture(autouse=True)
def fast_checks_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILLS_CHECK_INTERVAL_MS", "20")
    monkeypatch.setenv("EVENTBUS_RETRY_BACKOFF_MS", "10")
    monkeypatch.setenv("EVENTBUS_RETRY_BACKOFF_MAX_MS", "40")


def tick(bid: str = "40000", ask: str = "40001") -> MarketTick:
    return MarketTick(
        symbol="BTCUSDT", bid=D(bid), ask=D(ask), last=D(bid), volume=D(2), ts_ms=now_ms()
    )


def checked_since(since_ms: int) -> bool:
    """A check of the fill stream started at or after `since_ms`."""
    started = REGISTRY.get_sample_value("portfolio_fills_checked_timestamp_seconds") or 0.0
    return started * 1000 >= since_ms


def after_a_check(client: TestClient) -> dict[str, Any]:
    """GET /portfolio once a check has started after everything done so far was handled."""
    since = now_ms()
    wait_until(lambda: checked_since(since), what="a check of the fill stream")
    return portfolio(client)


def complete(client: TestClient) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: not (p := portfolio(client))["fills"]["problems"] and p["as_of_ms"] > 0 and p,
        what="the portfolio to be known complete",
    )


def test_a_fill_whose_handler_fails_for_good_stops_as_of_ms_while_ticks_go_on(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def always_fail(self: Booking, f: Fill, *_args: Any) -> int:
        raise DatabaseError("disk full")

    monkeypatch.setattr(Booking, "add", always_fail)
    with harness.run(create_service) as client:
        complete(client)
        harness.publish(fill_event("lost-1", "BUY", "1", "40000", "40", sequence=1))
        stale = wait_until(
            lambda: (p := portfolio(client))["fills"]["dead_letters"] >= 1 and p,
            what="the fill dead-lettered",
        )
        assert "dead_letters" in stale["fills"]["problems"]
        frozen = stale["as_of_ms"]

        for n in range(5):
            harness.publish(tick(bid=str(40000 + n), ask=str(40001 + n)))
        last_tick_ms = now_ms()
        wait_until(
            lambda: (
                (portfolio(client)["marks_as_of_ms"] or 0) >= last_tick_ms - 1000
                and portfolio(client)["positions"] == []
            ),
            what="the ticks marked",
        )
        p = after_a_check(client)

        assert p["marks_as_of_ms"] > frozen
        assert p["as_of_ms"] == frozen, "ticks must not make a portfolio that lost a fill fresh"
        assert p["fills"]["complete_as_of_ms"] == frozen
        assert p["fills"]["dead_letters"] == 1 and p["fills"]["pending"] == 0
        assert p["fills"]["booked_sequence"] == 0
        assert p["positions"] == []
        metrics = client.get("/metrics").text
        assert "portfolio_dead_letters 1.0" in metrics
        assert "portfolio_fills_complete 0.0" in metrics


def test_a_venue_sequence_that_never_arrives_is_a_gap_and_the_portfolio_is_stale(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    with harness.run(create_service) as client:
        complete(client)
        harness.publish(fill_event("g-2", "BUY", "1", "100", "0.1", sequence=2))
        wait_until(lambda: booked(client, 1), what="sequence 2 booked")
        booked_ms = now_ms()
        p = after_a_check(client)

        assert p["fills"]["gaps"] == [1]
        assert p["fills"]["booked_sequence"] == 0 and p["fills"]["max_sequence"] == 2
        assert p["fills"]["problems"] == ["gaps"]
        assert p["fills"]["pending"] == 0 and p["fills"]["lag"] == 0
        assert p["as_of_ms"] <= booked_ms
        assert "portfolio_fill_sequence_gaps 1.0" in client.get("/metrics").text
        span = [s for s in span_exporter.get_finished_spans() if s.name == "portfolio.snapshot"][-1]
        assert span.attributes["portfolio.complete"] is False
        assert tuple(span.attributes["portfolio.fills.gaps"]) == (1,)
        assert tuple(span.attributes["portfolio.fills.problems"]) == ("gaps",)

        harness.publish(fill_event("g-1", "BUY", "1", "100", "0.1", sequence=1))
        wait_until(lambda: booked(client, 2), what="sequence 1 booked")
        filled_ms = now_ms()
        p = wait_until(
            lambda: (p := complete(client))["as_of_ms"] >= filled_ms and p,
            what="as_of_ms past the gap's repair",
        )
        assert (p["fills"]["booked_sequence"], p["fills"]["gaps"]) == (2, [])


def test_with_every_fill_booked_as_of_ms_keeps_advancing_without_ticks(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        harness.publish(
            *(fill_event(f"h{n}-1", "BUY", "1", "100", "0.1", sequence=n) for n in (1, 2, 3))
        )
        wait_until(lambda: booked(client, 3), what="three fills booked")
        booked_ms = now_ms()
        first = wait_until(
            lambda: (p := complete(client))["as_of_ms"] >= booked_ms and p,
            what="as_of_ms past the bookings",
        )
        later = wait_until(
            lambda: (p := portfolio(client))["as_of_ms"] > first["as_of_ms"] and p,
            what="as_of_ms to advance",
        )

    assert later["marks_as_of_ms"] is not None  # the fills' prices are the marks
    assert later["fills"] == {
        "booked_sequence": 3,
        "max_sequence": 3,
        "gaps": [],
        "pending": 0,
        "lag": 0,
        "dead_letters": 0,
        "complete_as_of_ms": later["as_of_ms"],
        "problems": [],
    }


def test_a_fill_being_retried_is_pending_and_the_portfolio_is_fresh_once_it_is_booked(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = Booking.add
    release: list[bool] = []

    async def fail_until_released(self: Booking, f: Fill, *args: Any) -> int:
        if not release:
            raise DatabaseError("connection lost")
        return await book(self, f, *args)

    monkeypatch.setenv("EVENTBUS_MAX_DELIVERIES", "1000")
    monkeypatch.setattr(Booking, "add", fail_until_released)
    with harness.run(create_service) as client:
        harness.publish(fill_event("p-1", "BUY", "1", "100", "0.1", sequence=1))
        stale = wait_until(
            lambda: (p := portfolio(client))["fills"]["pending"] == 1 and p,
            what="the failing fill pending",
        )
        assert "pending" in stale["fills"]["problems"]
        release.append(True)
        p = complete(client)
        assert p["as_of_ms"] > stale["as_of_ms"]
        assert D(p["positions"][0]["quantity"]) == 1


def test_a_fill_in_memory_after_a_failed_write_and_rebuild_still_reaches_the_ledger(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    book, ledger = Booking.add, LedgerStore.ledger
    calls = {"book": 0, "ledger": 0}

    async def fail_first_booking(self: Booking, f: Fill, *args: Any) -> int:
        calls["book"] += 1
        if calls["book"] == 1:
            raise DatabaseError("connection lost")
        return await book(self, f, *args)

    async def fail_first_rebuild(self: LedgerStore) -> Any:
        calls["ledger"] += 1
        if calls["ledger"] == 2:  # the first one is the start-up rebuild
            raise DatabaseError("connection lost")
        return await ledger(self)

    monkeypatch.setattr(Booking, "add", fail_first_booking)
    monkeypatch.setattr(LedgerStore, "ledger", fail_first_rebuild)
    with harness.run(create_service) as client:
        harness.publish(fill_event("u-1", "BUY", "1", "100", "0.1", sequence=1))
        wait_until(lambda: booked(client, 1), what="the fill in the ledger")
        p = complete(client)

    assert calls["book"] == 2 and calls["ledger"] >= 3
    assert D(p["positions"][0]["quantity"]) == 1
    with harness.run(create_service) as client:
        assert D(portfolio(client)["positions"][0]["quantity"]) == 1


def test_a_backlog_that_cannot_be_read_stops_as_of_ms(harness: ServiceHarness) -> None:
    with harness.run(create_service) as client:
        complete(client)
        resources = client.app.state.resources  # type: ignore[attr-defined]
        book = resources.provided(PortfolioBook)
        # Point the check at a closed port: a real refused connection, as when Redis is down.
        unreachable = create_redis_client(f"redis://127.0.0.1:{free_port()}/0")
        book._monitor = GroupMonitor(unreachable, "portfolio-intelligence", "order.filled")
        p = wait_until(
            lambda: (p := portfolio(client))["fills"]["problems"] == ["backlog_unknown"] and p,
            what="the backlog unknown",
        )
        frozen = p["as_of_ms"]
        p = after_a_check(client)
        assert p["as_of_ms"] == frozen
        assert p["fills"]["lag"] is None
        assert "portfolio_fill_lag NaN" in client.get("/metrics").text
        client.portal.call(unreachable.aclose)  # type: ignore[union-attr]
