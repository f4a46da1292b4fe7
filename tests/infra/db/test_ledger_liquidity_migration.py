"""Revision 0006 (`ledger_fills.liquidity`): up, down and up again keep the ledger's rows."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.infra.db import (
    DatabaseSettings,
    create_engine,
    current_revision,
    downgrade,
    migrate,
)

BEFORE, REVISION = "0005_ledger_sequence", "0006_ledger_liquidity"
COLUMNS = "fill_id, client_order_id, symbol, side, quantity, price, fee, filled_at, booked_at"


def _columns(conn: Connection) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("ledger_fills")}


async def _insert(conn: AsyncConnection, fill_id: str, liquidity: str | None = None) -> None:
    columns, values = COLUMNS, ":fill_id, 'c-1', 'BTCUSDT', 'BUY', 1, 100, 0.1, :at, :at"
    if liquidity is not None:
        columns, values = f"{columns}, liquidity", f"{values}, :liquidity"
    at = datetime(2026, 12, 1, tzinfo=UTC)
    if conn.dialect.name == "sqlite":
        at = at.replace(tzinfo=None)  # how UtcDateTime stores it there
    await conn.execute(
        text(f"INSERT INTO ledger_fills ({columns}) VALUES ({values})"),
        {
            "fill_id": fill_id,
            "at": at,
            "liquidity": liquidity,
        },
    )


async def _liquidity(conn: AsyncConnection) -> dict[str, str | None]:
    rows = await conn.execute(text("SELECT fill_id, liquidity FROM ledger_fills ORDER BY id"))
    return {fill_id: liquidity for fill_id, liquidity in rows}


async def _fill_ids(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(text("SELECT fill_id FROM ledger_fills ORDER BY id"))
    return [fill_id for (fill_id,) in rows]


async def test_liquidity_is_added_empty_for_old_rows_and_dropped_again_keeping_the_rows(
    database_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        assert await migrate(engine, BEFORE) == BEFORE
        async with engine.begin() as conn:
            assert "liquidity" not in await conn.run_sync(_columns)
            await _insert(conn, "booked-before-0006")

        assert await migrate(engine, REVISION) == REVISION
        async with engine.begin() as conn:
            assert "liquidity" in await conn.run_sync(_columns)
            await _insert(conn, "maker", "MAKER")
            assert await _liquidity(conn) == {"booked-before-0006": None, "maker": "MAKER"}

        assert await downgrade(engine, BEFORE) == BEFORE
        async with engine.begin() as conn:
            assert "liquidity" not in await conn.run_sync(_columns)
            assert await _fill_ids(conn) == ["booked-before-0006", "maker"]

        assert await migrate(engine, REVISION) == REVISION
        assert await current_revision(engine) == REVISION
        async with engine.begin() as conn:
            assert await _liquidity(conn) == {"booked-before-0006": None, "maker": None}
    finally:
        await engine.dispose()
