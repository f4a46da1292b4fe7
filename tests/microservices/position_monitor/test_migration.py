"""Migration 0010: position-monitor's entry moves from the JSON `stops` column to its own
columns, on a database holding rows of the old shape (SQLite and PostgreSQL), and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from backend.infra.db import DatabaseSettings, create_engine, downgrade, migrate
from backend.infra.db.models import MonitoredPosition

BEFORE = "0008_monitored_positions"
AFTER = "0010_monitored_entry"
TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
STOPS = {"stop_loss": {"value": "2", "kind": "PERCENT"}, "take_profit": None}
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
OLD = sa.table(
    "monitored_positions",
    *(
        sa.column(name, type_)
        for name, type_ in (
            ("position_id", sa.String()),
            ("symbol", sa.String()),
            ("status", sa.String()),
            ("quantity", sa.Numeric(38, 18)),
            ("entry_price", sa.Numeric(38, 18)),
            ("opened_ms", sa.BigInteger()),
            ("stops", JSON),
            ("trailing_active", sa.Boolean()),
            ("exit_round", sa.Integer()),
            ("exit_detail", sa.Text()),
            ("updated_at", sa.DateTime(timezone=True)),
        )
    ),
)


def old_row(position_id: str, stops: dict[str, Any]) -> dict[str, Any]:
    return {
        "position_id": position_id,
        "symbol": "BTCUSDT",
        "status": "OPEN",
        "quantity": 1,
        "entry_price": 100,
        "opened_ms": 1,
        "stops": stops,
        "trailing_active": False,
        "exit_round": 1,
        "exit_detail": "",
        "updated_at": datetime(2026, 12, 4, tzinfo=UTC),
    }


async def test_the_entry_moves_out_of_the_stops_json_and_back(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        assert await migrate(engine, BEFORE) == BEFORE
        entry = {"client_order_id": "qt-entry-1", "traceparent": TRACEPARENT}
        async with engine.begin() as conn:
            await conn.execute(
                OLD.insert(),
                [
                    old_row("with-entry", {**STOPS, "entry": entry}),
                    old_row("no-entry", dict(STOPS)),
                    old_row("id-only", {**STOPS, "entry": {"client_order_id": "qt-entry-2"}}),
                ],
            )

        assert await migrate(engine, AFTER) == AFTER
        async with engine.connect() as conn:
            rows = {
                r.position_id: r
                for r in await conn.execute(
                    sa.select(
                        MonitoredPosition.position_id,
                        MonitoredPosition.stops,
                        MonitoredPosition.entry_client_order_id,
                        MonitoredPosition.entry_traceparent,
                    )
                )
            }
        assert {k: r[1:] for k, r in rows.items()} == {
            "with-entry": (STOPS, "qt-entry-1", TRACEPARENT),
            "no-entry": (STOPS, None, None),
            "id-only": (STOPS, "qt-entry-2", None),
        }

        assert await downgrade(engine, BEFORE) == BEFORE
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(OLD.c.position_id, OLD.c.stops))
            back = {position_id: stops for position_id, stops in result}
        assert back == {
            "with-entry": {**STOPS, "entry": entry},
            "no-entry": STOPS,
            "id-only": {**STOPS, "entry": {"client_order_id": "qt-entry-2", "traceparent": None}},
        }
    finally:
        await engine.dispose()
