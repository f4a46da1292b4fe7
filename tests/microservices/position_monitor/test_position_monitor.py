"""position-monitor in-process, against a real Redis and database, with risk-safety, execution
and portfolio-intelligence stubbed by one server that answers with their contract models
(`conftest.py`)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient

from backend.infra.eventbus import EventBusSettings, Idempotency, create_redis_client
from backend.trading.events import MarketTick, PositionUpdated
from backend.trading.types import ZERO
from microservices.position_monitor.service import create_service
from tests.support.factories import market_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

from .conftest import Upstreams

D = Decimal
SYMBOL = "BTCUSDT"


def position(client: TestClient) -> dict[str, Any]:
    (found,) = client.get("/positions").json()["data"]
    return dict(found)


def watching(
    client: TestClient, harness: ServiceHarness, upstreams: Upstreams, quantity: str = "2"
) -> dict[str, Any]:
    harness.publish(
        PositionUpdated(
            symbol=SYMBOL,
            quantity=D(quantity),
            average_price=D(100),
            realized_pnl=ZERO,
            unrealized_pnl=ZERO,
            sequence=7,
        )
    )
    wait_until(lambda: client.get("/positions").json()["count"] == 1, 10, "the position")
    # What the portfolio answers from now on (not before: its first answer, at start, is flat).
    upstreams.held[SYMBOL] = D(quantity)
    return position(client)


def closed_by_portfolio(harness: ServiceHarness) -> None:
    harness.publish(
        PositionUpdated(
            symbol=SYMBOL,
            quantity=ZERO,
            average_price=None,
            realized_pnl=ZERO,
            unrealized_pnl=ZERO,
            sequence=8,
        )
    )


def tick(bid: str) -> MarketTick:
    return market_tick(bid, str(D(bid) + D("0.1")))


def test_a_stop_loss_exits_once_whatever_ticks_come_after(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service) as client:
        watched = watching(client, harness, upstreams)
        assert watched["position_id"] == "BTCUSDT-7"
        assert Decimal(watched["stop_loss_level"]) == D(98)
        harness.publish(tick("99"))
        harness.publish(tick("97.9"))
        wait_until(lambda: position(client)["status"] == "EXITING", 10, "the stop to trigger")
        wait_until(lambda: upstreams.posts, 10, "the exit order")
        # The same tick again (a redelivery: same event id) and ticks further down.
        harness.publish(tick("97.9"), event_id="the-tick")
        harness.publish(tick("97.9"), event_id="the-tick")
        harness.publish(tick("90"))
        closed_by_portfolio(harness)
        wait_until(lambda: position(client)["status"] == "CLOSED", 10, "the position to close")
        assert upstreams.posts == ["pm-BTCUSDT-7-SL"] == upstreams.checks
        exit_ = position(client)["exit"]
        assert (exit_["reason"], exit_["outcome"], Decimal(exit_["quantity"])) == (
            "STOP_LOSS",
            "FILLED",
            D(2),
        )
    (announced,) = harness.published("stop.triggered")
    assert (announced["reason"], announced["client_order_id"]) == ("STOP_LOSS", "pm-BTCUSDT-7-SL")


def test_the_exit_links_to_the_entry_that_opened_the_position(
    harness: ServiceHarness, upstreams: Upstreams, span_exporter: Any
) -> None:
    from opentelemetry import trace

    with harness.run(create_service) as client:
        with trace.get_tracer("test").start_as_current_span("book entry fill") as booking:
            harness.publish(
                PositionUpdated(
                    symbol=SYMBOL,
                    quantity=D(2),
                    average_price=D(100),
                    realized_pnl=ZERO,
                    unrealized_pnl=ZERO,
                    sequence=7,
                    client_order_id="qt-entry-1",
                )
            )
        entry_trace = booking.get_span_context().trace_id
        wait_until(lambda: client.get("/positions").json()["count"] == 1, 10, "the position")
        upstreams.held[SYMBOL] = D(2)
        harness.publish(tick("97.9"))
        wait_until(lambda: upstreams.posts, 10, "the exit order")
    (stop,) = [s for s in span_exporter.get_finished_spans() if s.name == "stop.trigger"]
    assert stop.attributes["entry.client_order_id"] == "qt-entry-1"
    assert stop.attributes["client_order_id"] == "pm-BTCUSDT-7-SL"
    assert [link.context.trace_id for link in stop.links] == [entry_trace]
    assert stop.context.trace_id != entry_trace


def test_an_exit_whose_answer_was_lost_is_sent_again_under_the_same_client_order_id(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    upstreams.lose_answers = 1
    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
        harness.publish(tick("97"))
        wait_until(
            lambda: (position(client)["exit"] or {}).get("outcome") == "FILLED",
            10,
            "the exit's outcome to be learnt",
        )
    assert upstreams.posts == ["pm-BTCUSDT-7-SL", "pm-BTCUSDT-7-SL"]
    assert list(upstreams.orders) == ["pm-BTCUSDT-7-SL"], "one order at execution"


def test_a_refused_exit_escalates_to_an_emergency_exit(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    upstreams.refuse_orders = {"pm-BTCUSDT-7-SL"}
    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
        harness.publish(tick("97"))
        wait_until(
            lambda: (
                (position(client)["exit"] or {}).get("stage") == "EMERGENCY"
                and position(client)["exit"]["outcome"] == "FILLED"
            ),
            10,
            "the emergency exit to fill",
        )
        closed_by_portfolio(harness)
        wait_until(lambda: position(client)["status"] == "CLOSED", 10, "the position to close")
    assert upstreams.posts == ["pm-BTCUSDT-7-SL", "pm-BTCUSDT-7-SL-EM"]
    assert harness.published("stop.failed") == []


def test_an_exit_denied_twice_alerts_and_a_new_set_of_stops_rearms_it(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    upstreams.deny = True
    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
        harness.publish(tick("97"))
        wait_until(lambda: position(client)["status"] == "ALERTED", 10, "the alert")
        assert upstreams.checks == ["pm-BTCUSDT-7-SL", "pm-BTCUSDT-7-SL-EM"]
        assert upstreams.posts == []
        # The status is shown as soon as it is committed; its alert follows through the outbox.
        (alert,) = wait_until(lambda: harness.published("stop.failed"), 10, "the alert event")
        assert (alert["position_id"], alert["client_order_id"]) == (
            "BTCUSDT-7",
            "pm-BTCUSDT-7-SL-EM",
        )
        assert (
            'position_monitor_alerts_total{reason="STOP_LOSS"} 1.0' in client.get("/metrics").text
        )
        # An operator re-arms it: a new round, with client order ids of its own.
        upstreams.deny = False
        stops = position(client)["stops"]
        rearmed = client.put("/positions/BTCUSDT-7/stops", json=stops)
        assert rearmed.status_code == 200, rearmed.text
        assert (rearmed.json()["status"], rearmed.json()["exit_round"]) == ("OPEN", 2)
        harness.publish(tick("96"))
        wait_until(lambda: "pm-BTCUSDT-7-SL-r2" in upstreams.posts, 10, "the second round's exit")


def test_stops_change_over_http_with_the_token_and_never_loosen_the_trailing_level(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
        tight = {"trailing_stop": {"value": "1", "kind": "PERCENT"}, "trailing_price": "MARK"}
        path = "/positions/BTCUSDT-7/stops"
        stranger = client.put(path, json=tight, headers={"Authorization": "Bearer nope"})
        assert stranger.status_code == 403
        assert client.put("/positions/BTCUSDT-7/stops", json={"stop_loss": 5}).status_code == 422
        assert client.put("/positions/nope/stops", json=tight).status_code == 404
        changed = client.put(path, json=tight).json()
        assert (
            changed["stops"]["stop_loss"] is None and changed["stops"]["trailing_price"] == "MARK"
        )
        harness.publish(market_tick("109.9", "110.1"))
        wait_until(
            lambda: position(client)["trailing_level"] == "108.9", 10, "the level at 110 x 0.99"
        )
        wide = {**tight, "trailing_stop": {"value": "10", "kind": "PERCENT"}}
        assert client.put(path, json=wide).status_code == 200
        harness.publish(market_tick("109.4", "109.6"))
        wait_until(lambda: position(client)["best_price"] == "110", 10, "the tick")
        assert position(client)["trailing_level"] == "108.9", "a wider offset loosens nothing"
        assert client.get("/stops/defaults").json()["stop_loss"] == {
            "value": "2",
            "kind": "PERCENT",
        }


def test_a_restart_sends_the_exit_stored_before_the_crash_under_its_own_id(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
    # What a crash between storing the exit and sending it leaves behind.
    db = sqlite3.connect(harness.database_url.split("///", 1)[1])
    with db:
        db.execute(
            "UPDATE monitored_positions SET status='EXITING', exit_reason='STOP_LOSS',"
            " exit_stage='EXIT', exit_client_order_id='pm-BTCUSDT-7-SL', exit_quantity=2,"
            f" exit_trigger_price=98, exit_observed_price=97, exit_started_ms={now_ms()}"
        )
    db.close()
    with harness.run(create_service) as client:
        wait_until(lambda: upstreams.posts, 10, "the stored exit to be sent")
        wait_until(
            lambda: position(client)["exit"]["outcome"] == "FILLED", 10, "the exit's outcome"
        )
    assert upstreams.posts == ["pm-BTCUSDT-7-SL"]


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def test_the_entry_a_position_came_from_survives_a_restart() -> None:
    from backend.infra.db.models import MonitoredPosition
    from backend.trading.stops import ExitConfig
    from backend.trading.types import Symbol
    from microservices.position_monitor.positions import Status, Tracked
    from microservices.position_monitor.store import columns_of, tracked_of

    held = Tracked(
        position_id="BTCUSDT-7",
        symbol=Symbol(SYMBOL),
        status=Status.OPEN,
        quantity=D(2),
        entry_price=D(100),
        opened_ms=1,
        sequence=7,
        config=ExitConfig(),
        entry_client_order_id="qt-entry-1",
        entry_traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
    )
    assert tracked_of(MonitoredPosition(**columns_of(held))) == held


def test_a_tick_delivered_twice_changes_nothing_more_than_once(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    """Ticks are read without processed marks (a tick whose id is marked is still judged), and
    a copy of a tick (its event id again) that comes after a newer one is not judged again: an
    exit tightened in between does not trigger on the older price."""
    ts_ms = int(datetime.now(UTC).timestamp() * 1000)

    async def mark_processed() -> None:
        redis = create_redis_client(harness.redis_url)
        try:
            settings = EventBusSettings(prefix=harness.prefix)
            await Idempotency(redis, "position-monitor", settings).mark_many(["pm-tick-a"])
        finally:
            await redis.aclose()

    with harness.run(create_service) as client:
        watching(client, harness, upstreams)
        asyncio.run(mark_processed())
        harness.publish(market_tick("101", "101.1", ts_ms=ts_ms), event_id="pm-tick-a")
        wait_until(lambda: position(client)["best_price"] == "101", 10, "the marked tick")
        harness.publish(market_tick("103", "103.1", ts_ms=ts_ms + 1))
        wait_until(lambda: position(client)["best_price"] == "103", 10, "the newer tick")
        tight = {"trailing_stop": {"value": "1", "kind": "PERCENT"}}
        assert client.put("/positions/BTCUSDT-7/stops", json=tight).status_code == 200
        # The first tick again, below the new level (103 x 0.99), then a newer one.
        harness.publish(market_tick("101", "101.1", ts_ms=ts_ms), event_id="pm-tick-a")
        harness.publish(market_tick("104", "104.1", ts_ms=ts_ms + 2))
        wait_until(lambda: position(client)["best_price"] == "104", 10, "the last tick")
        assert position(client)["status"] == "OPEN"
        assert upstreams.posts == []
