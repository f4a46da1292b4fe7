"""position-monitor follows the portfolio's `position.updated` a read at a time: the updates of
one read are applied in order in memory and every position they change is written once, in
one transaction. Real Redis and a real database (SQLite, and PostgreSQL where it says so);
risk-safety, execution and portfolio-intelligence are the stub of `test_position_monitor`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from backend.infra.db.models import MonitoredPosition
from backend.infra.eventbus import EventBusSettings, default_catalogue
from backend.trading.events import PositionUpdated
from backend.trading.types import ZERO
from microservices.position_monitor.service import create_service
from tests.support.factories import market_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

from .conftest import Upstreams

D = Decimal
STREAM = default_catalogue().spec_for_type("position.updated").stream
GROUP = "position-monitor"

# One symbol's updates: opened, grown, closed, re-opened short, flipped long, grown again.
STORY: list[tuple[int, str, str | None]] = [
    (1, "2", "100"),
    (2, "3", "102"),
    (3, "0", None),
    (4, "-1", "105"),
    (5, "2", "104"),
    (6, "3", "104"),
]


def update(symbol: str, sequence: int, quantity: str, average: str | None) -> PositionUpdated:
    return PositionUpdated(
        symbol=symbol,
        quantity=D(quantity),
        average_price=D(average) if average is not None else None,
        realized_pnl=ZERO,
        unrealized_pnl=ZERO,
        sequence=sequence,
        client_order_id=f"qt-{symbol}-{sequence}",
    )


def consumed(harness: ServiceHarness) -> bool:
    """True once the monitor's group was handed every `position.updated` and acknowledged it."""
    key = EventBusSettings(prefix=harness.prefix).stream_key(STREAM)
    client = redis.Redis.from_url(harness.redis_url)
    try:
        last: Any = client.xrevrange(key, count=1)
        groups = {g["name"].decode(): g for g in client.xinfo_groups(key)} if last else {}
    finally:
        client.close()
    group = groups.get(GROUP)
    return group is not None and group["pending"] == 0 and group["last-delivered-id"] == last[0][0]


def publish_and_wait(harness: ServiceHarness, *events: PositionUpdated) -> None:
    harness.publish(*events)  # several: one XADD script, so one read returns them all
    wait_until(lambda: consumed(harness), 10, "the updates to be handled")


def rows(harness: ServiceHarness, symbol: str) -> list[dict[str, Any]]:
    """`symbol`'s rows in the table, by id, in the symbol-free terms compared."""
    columns = ("position_id", "status", "quantity", "entry_price", "sequence")
    query = (
        select(*(getattr(MonitoredPosition, c) for c in (*columns, "entry_client_order_id")))
        .where(MonitoredPosition.symbol == symbol)
        .order_by(MonitoredPosition.position_id)
    )
    return [
        {
            **dict(zip(columns, row[:-1], strict=True)),
            "position_id": row[0].replace(symbol, "X"),
            "entry_client_order_id": row[-1].replace(symbol, "X"),
        }
        for row in run_sql(harness.database_url, query)
    ]


def statements_on_positions(client: TestClient) -> tuple[list[str], Any]:
    """Record the verb of every SQL statement on `monitored_positions` (and the listener)."""
    engine = client.app.state.resources.engine.sync_engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "monitored_positions" in statement:
            seen.append(statement.lstrip().split()[0].upper())

    sa_event.listen(engine, "before_cursor_execute", executed)
    return seen, (engine, executed)


def test_a_reads_updates_leave_the_rows_and_ids_that_one_at_a_time_leaves(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service) as client:
        for sequence, quantity, average in STORY:
            publish_and_wait(harness, update("ETHUSDT", sequence, quantity, average))
        one_at_a_time = rows(harness, "ETHUSDT")

        seen, (engine, listener) = statements_on_positions(client)
        try:
            publish_and_wait(harness, *(update("SOLUSDT", *step) for step in STORY))
        finally:
            sa_event.remove(engine, "before_cursor_execute", listener)
        batched = rows(harness, "SOLUSDT")
        live = client.get("/positions/SOLUSDT-5").json()  # memory first, then the table

    assert [(p["position_id"], p["status"]) for p in one_at_a_time] == [
        ("X-1", "CLOSED"),
        ("X-4", "CLOSED"),
        ("X-5", "OPEN"),
    ]
    assert (one_at_a_time[-1]["quantity"], one_at_a_time[-1]["sequence"]) == (D(3), 6)
    assert batched == one_at_a_time
    assert (live["status"], D(live["quantity"])) == ("OPEN", D(3))
    # Three positions, each written once with the state the read left it in: one INSERT of
    # three rows, no read of the table to find free ids, no row written twice.
    assert Counter(seen) == {"INSERT": 1}, seen


def test_an_update_older_than_one_applied_in_the_same_read_is_ignored(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service):
        publish_and_wait(
            harness,
            update("ETHUSDT", 5, "2", "100"),
            update("ETHUSDT", 3, "9", "90"),  # older than 5
            update("ETHUSDT", 6, "3", "101"),
            update("ETHUSDT", 4, "0", None),  # older than 6: no close
        )
        (position,) = rows(harness, "ETHUSDT")
    assert position == {
        "position_id": "X-5",
        "status": "OPEN",
        "quantity": D(3),
        "entry_price": D(101),
        "sequence": 6,
        "entry_client_order_id": "qt-X-5",
    }


def test_a_closed_positions_id_is_not_reused_after_a_restart(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service):
        publish_and_wait(harness, update("ETHUSDT", 7, "2", "100"), update("ETHUSDT", 8, "0", None))
    # Memory holds no closed position: after a restart, only the table knows ETHUSDT-7.
    with harness.run(create_service):
        publish_and_wait(harness, update("ETHUSDT", 7, "1", "100"))
        ids = [(p["position_id"], p["status"]) for p in rows(harness, "ETHUSDT")]
    assert ids == [("X-7", "CLOSED"), ("X-7-2", "OPEN")]


def run_sql(database_url: str, *statements: Any) -> list[Any]:
    """Run `statements` in one transaction on the service's database; the last one's rows."""

    async def run() -> list[Any]:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    result = await connection.execute(
                        text(statement) if isinstance(statement, str) else statement
                    )
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def refuse_position(database_url: str, position_id: str) -> None:
    """Make the database refuse to insert the row of `position_id` (a real write failure)."""
    if database_url.startswith("sqlite"):
        run_sql(
            database_url,
            "CREATE TRIGGER refuse BEFORE INSERT ON monitored_positions"
            f" WHEN NEW.position_id = '{position_id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        return
    run_sql(
        database_url,
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
        f" IF NEW.position_id = '{position_id}' THEN RAISE EXCEPTION 'refused by the test';"
        " END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE INSERT ON monitored_positions"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )


def dead_letters(harness: ServiceHarness) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(harness.redis_url)
    try:
        key = EventBusSettings(prefix=harness.prefix).dead_letter_key(STREAM)
        entries: Any = client.xrange(key)
        return [fields for _id, fields in entries]
    finally:
        client.close()


def test_a_write_failing_mid_read_leaves_table_and_memory_alike_and_each_update_applies_once(
    harness_database: ServiceHarness, upstreams: Upstreams
) -> None:
    harness = harness_database
    with harness.run(create_service) as client:
        refuse_position(harness.database_url, "SOLUSDT-2")
        harness.publish(
            update("ETHUSDT", 1, "1", "100"),
            update("SOLUSDT", 2, "5", "20"),  # its row is refused: the read's transaction fails
            update("ETHUSDT", 3, "0", None),
            update("ETHUSDT", 4, "-2", "110"),
        )
        # The read is handed over again one update at a time: the refused one is retried
        # and dead-lettered alone, the others are applied once each.
        (dead,) = wait_until(lambda: dead_letters(harness), 20, "the refused update")
        assert b'"sequence":2' in dead[b"original.event"] and b"SOLUSDT" in dead[b"original.event"]
        wait_until(lambda: consumed(harness), 10, "every update to be settled")
        eth = rows(harness, "ETHUSDT")
        memory = client.get("/positions/ETHUSDT-4").json()
        sol = client.get("/positions/SOLUSDT-2")
        gauges = client.get("/metrics").text
    assert [(p["position_id"], p["status"], p["quantity"]) for p in eth] == [
        ("X-1", "CLOSED", D(1)),
        ("X-4", "OPEN", D(-2)),
    ]
    assert (memory["status"], D(memory["quantity"]), D(memory["entry_price"])) == (
        "OPEN",
        D(-2),
        D(110),
    )
    assert sol.status_code == 404, "in neither memory nor the table"
    assert 'position_monitor_positions{status="OPEN"} 1.0' in gauges


def test_a_ticks_new_best_price_is_written_without_reading_the_row_first(
    harness: ServiceHarness, upstreams: Upstreams
) -> None:
    with harness.run(create_service) as client:
        publish_and_wait(harness, update("BTCUSDT", 7, "2", "100"))
        seen, (engine, listener) = statements_on_positions(client)
        try:
            harness.publish(market_tick("101", "101.1"))
            wait_until(
                lambda: client.get("/positions/BTCUSDT-7").json()["best_price"] == "101",
                10,
                "the best price",
            )
        finally:
            sa_event.remove(engine, "before_cursor_execute", listener)
    assert seen == ["UPDATE"]
