"""The schema's shape: table ownership, and column types that behave alike on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import DateTime, select
from sqlalchemy.dialects import sqlite

from backend.infra.db import (
    TABLE_OWNERS,
    Base,
    DatabaseSettings,
    create_engine,
    create_session_factory,
    migrate,
    owner_of,
    session_scope,
)
from backend.infra.db._types import UtcDateTime
from backend.infra.db.models import EquityPoint, FillRecord, OrderRecord
from tests.support.factories import order_record


def test_every_table_has_exactly_one_owning_service() -> None:
    owned = [table for tables in TABLE_OWNERS.values() for table in tables]
    assert len(owned) == len(set(owned)), "a table is listed under two services"
    assert set(owned) == set(Base.metadata.tables)
    assert owner_of("fills") == "execution"
    assert owner_of("trading_state_changes") == "risk-safety"
    with pytest.raises(KeyError):
        owner_of("alembic_version")


def test_idempotency_keys_are_unique() -> None:
    assert Base.metadata.tables["orders"].c.client_order_id.unique
    assert Base.metadata.tables["fills"].c.fill_id.unique
    assert Base.metadata.tables["ledger_fills"].c.fill_id.unique


def _order(client_order_id: str, quantity: Decimal) -> OrderRecord:
    return order_record(client_order_id, order_type="LIMIT", quantity=quantity, limit_price="0.1")


async def test_decimals_and_timestamps_round_trip(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        # PostgreSQL keeps every digit; SQLite's NUMERIC keeps 15 significant digits.
        if database_url.startswith("sqlite"):
            precise = Decimal("123456789.123456")
        else:
            precise = Decimal("123456789.123456789012345678")
        at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
        async with session_scope(sessions) as session:
            session.add(_order("qt-precise", precise))
            session.add(
                EquityPoint(
                    at=at,
                    equity=Decimal("10000.5"),
                    cash=Decimal("0.000000000000000001"),
                    unrealized_pnl=Decimal("-3.25"),
                    realized_pnl=Decimal(0),
                )
            )
        async with session_scope(sessions) as session:
            order = (await session.execute(select(OrderRecord))).scalar_one()
            point = (await session.execute(select(EquityPoint))).scalar_one()
            # SQL comparison still works on the stored numbers (SQLite: numeric affinity).
            small = await session.scalar(
                select(EquityPoint.id).where(EquityPoint.cash > Decimal(0))
            )
        assert order.quantity == precise and isinstance(order.quantity, Decimal)
        assert order.limit_price == Decimal("0.1")
        assert point.cash == Decimal("0.000000000000000001")
        assert point.at == at and point.at.tzinfo is not None
        assert point.at.utcoffset() == timedelta(0)
        assert order.created_at.tzinfo is not None
        assert small == point.id
    finally:
        await engine.dispose()


async def test_naive_timestamps_are_refused(sqlite_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        with pytest.raises(Exception, match="naive datetime"):
            async with session_scope(sessions) as session:
                session.add(
                    FillRecord(
                        fill_id="f-1",
                        order_id=1,
                        client_order_id="qt-1",
                        symbol="BTCUSDT",
                        side="BUY",
                        quantity=Decimal(1),
                        price=Decimal(1),
                        fee=Decimal(0),
                        liquidity="TAKER",
                        filled_at=datetime(2026, 1, 1),
                    )
                )
    finally:
        await engine.dispose()


def test_sqlite_binds_a_timestamp_as_sqlalchemy_stores_a_utc_datetime() -> None:
    dialect = sqlite.dialect()
    column = UtcDateTime()
    bind = column.dialect_impl(dialect).bind_processor(dialect)
    stock = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None and stock is not None
    east = timezone(timedelta(hours=5, minutes=30))
    for value in (
        datetime(2026, 12, 4, 17, 59, 1, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still written out
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=east),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=ZoneInfo("UTC")),
    ):
        assert bind(value) == stock(column.process_bind_param(value, dialect))
    assert bind(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        bind(datetime(2026, 1, 2, 3, 4, 5))
