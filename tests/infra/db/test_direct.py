"""`execute`: a statement on SQLite's connection below SQLAlchemy's execution, with the same
rows, conversions, span, comment and errors as `session.execute`; everything else through it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.infra.db import (
    DatabaseSettings,
    IntegrityViolationError,
    create_engine,
    create_session_factory,
    execute,
    migrate,
    session_scope,
)
from backend.infra.db.models import BotDecision, OrderRecord, RiskDecision
from backend.infra.observability import get_tracer
from tests.support.factories import order_record

DECISIONS = cast(Table, RiskDecision.__table__)
BOT = cast(Table, BotDecision.__table__)
INSERT_RETURNING = insert(DECISIONS).returning(DECISIONS.c.id, DECISIONS.c.client_order_id)
INSERT = insert(DECISIONS)
BY_SYMBOL = select(
    DECISIONS.c.client_order_id, DECISIONS.c.quantity, DECISIONS.c.reasons, DECISIONS.c.decided_at
).where(DECISIONS.c.symbol == bindparam("symbol"))
APPROVE = update(DECISIONS).where(DECISIONS.c.symbol == bindparam("of")).values(approved=True)
KNOWN = select(DECISIONS.c.client_order_id).where(
    DECISIONS.c.client_order_id.in_(bindparam("ids", expanding=True))
)
TRACEPARENT = re.compile(r"/\*traceparent='00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}'\*/$")
tracer = get_tracer("tests.infra.db.direct")


def decision(cid: str, symbol: str = "SOLUSDT", quantity: str = "0.123456789") -> dict[str, Any]:
    return {
        "client_order_id": cid,
        "symbol": symbol,
        "side": "BUY",
        "quantity": Decimal(quantity),
        "approved": False,
        "reasons": [{"code": "OK", "detail": "é"}],
        "trace_id": None,
        "decided_at": datetime(2026, 12, 5, 6, 30, 1, 250000, tzinfo=UTC),
    }


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        DatabaseSettings(url=database_url, service_name="db-tests", log_statements=True)
    )
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def below(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Statements that went through `session.execute`: on SQLite, one of them means the
    statement did not go below SQLAlchemy."""
    through: list[str] = []
    original = AsyncSession.execute

    async def counted(self: AsyncSession, statement: Any, *args: Any, **kwargs: Any) -> Any:
        through.append(str(statement).split()[0])
        return await original(self, statement, *args, **kwargs)

    monkeypatch.setattr(AsyncSession, "execute", counted)
    return through


async def test_rows_conversions_and_effects_are_those_of_session_execute(
    engine: AsyncEngine, below: list[str]
) -> None:
    sessions = create_session_factory(engine)
    async with session_scope(sessions) as session:
        written = (await execute(session, INSERT_RETURNING, [decision("d-1")])).all()
        await execute(session, INSERT, [decision("d-2"), decision("d-3", quantity="2")])
        await execute(session, INSERT, decision("d-4", symbol="ETHUSDT"))
        changed = await execute(session, APPROVE, {"of": "SOLUSDT"})
    assert [cid for _, cid in written] == ["d-1"]
    assert changed.rowcount == 3
    async with session_scope(sessions) as session:
        direct = (await execute(session, BY_SYMBOL, {"symbol": "SOLUSDT"})).all()
        through = (await session.execute(BY_SYMBOL, {"symbol": "SOLUSDT"})).all()
        count = (await execute(session, select(func.count()).select_from(DECISIONS))).scalar()
        approved = await session.scalars(select(RiskDecision.approved))
        assert set(approved.all()) == {True, False}
    assert count == 4
    assert [tuple(row) for row in direct] == [tuple(row) for row in through]
    cid, quantity, reasons, decided_at = direct[0]
    assert (cid, quantity, reasons) == (
        "d-1",
        Decimal("0.123456789"),
        [{"code": "OK", "detail": "é"}],
    )
    assert decided_at == datetime(2026, 12, 5, 6, 30, 1, 250000, tzinfo=UTC)
    # The two reads made through the session for comparison are the only statements that went
    # through SQLAlchemy on SQLite; PostgreSQL takes that way for all of them.
    expected = 2 if engine.dialect.name == "sqlite" else 8
    assert len(below) == expected, below


async def test_python_side_defaults_are_made_for_every_row(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)
    row = {
        "symbol": "SOLUSDT",
        "action": "SKIPPED",
        "confidence": 0.5,
        "model_name": "m",
        "model_version": "v1",
        "features": {},
    }
    async with session_scope(sessions) as session:
        await execute(session, insert(BOT), [row, {**row, "symbol": "ETHUSDT"}])
    async with session_scope(sessions) as session:
        stored = (await session.scalars(select(BotDecision).order_by(BotDecision.id))).all()
    # `reason`, `detail` (constants) and `decided_at` (a function) were not given.
    assert [(d.symbol, d.reason, d.detail) for d in stored] == [
        ("SOLUSDT", "", ""),
        ("ETHUSDT", "", ""),
    ]
    assert all(abs((datetime.now(UTC) - d.decided_at).total_seconds()) < 60 for d in stored)
    assert stored[0].decided_at < stored[1].decided_at


async def test_pending_objects_are_flushed_first_and_a_rollback_takes_everything(
    engine: AsyncEngine,
) -> None:
    sessions = create_session_factory(engine)
    count = select(func.count()).select_from(DECISIONS)
    with pytest.raises(RuntimeError):
        async with session_scope(sessions) as session:
            session.add(RiskDecision(**decision("orm-1")))
            assert (await execute(session, count)).scalar() == 1
            await execute(session, INSERT, decision("direct-1"))
            assert (await execute(session, count)).scalar() == 2
            raise RuntimeError("the unit of work fails")
    async with session_scope(sessions) as session:
        assert (await execute(session, count)).scalar() == 0


async def test_the_span_and_the_comment_are_those_of_session_execute(
    engine: AsyncEngine, span_exporter: Any, log_lines: Any
) -> None:
    sessions = create_session_factory(engine)
    with tracer.start_as_current_span("place order") as parent:
        async with session_scope(sessions) as session:
            await execute(session, INSERT, decision("span-1"))
            await execute(session, INSERT, [decision("span-2"), decision("span-3")])
    spans = [s for s in span_exporter.get_finished_spans() if s.kind.name == "CLIENT"]
    by_name = {s.name: s for s in spans}
    one, batch = by_name["INSERT risk_decisions"], by_name["BATCH INSERT risk_decisions"]
    assert one.parent.span_id == parent.get_span_context().span_id
    attrs = dict(one.attributes)
    assert attrs["db.system.name"] == engine.dialect.name
    assert attrs["db.operation.name"] == "INSERT"
    assert attrs["db.collection.name"] == "risk_decisions"
    assert attrs["db.query.text"].startswith("INSERT INTO risk_decisions")
    assert dict(batch.attributes)["db.operation.batch.size"] == 2
    sent = [
        line for line in log_lines.getvalue().splitlines() if "INSERT INTO risk_decisions" in line
    ]
    assert len(sent) == 2
    found = TRACEPARENT.search(sent[0].split('"statement":"')[1].split('","')[0])
    assert found is not None, sent[0]
    assert found.group(2) == format(one.context.span_id, "016x")


async def test_a_constraint_violation_is_sqlalchemys_integrity_error_on_the_span(
    engine: AsyncEngine, span_exporter: Any
) -> None:
    sessions = create_session_factory(engine)
    async with session_scope(sessions) as session:
        session.add(order_record("dup-1"))
    orders = cast(Table, OrderRecord.__table__)
    row = {
        c: getattr(order_record("dup-1"), c)
        for c in ("client_order_id", "symbol", "side", "order_type", "quantity", "status")
    }
    row["time_in_force"] = "GTC"
    async with sessions() as session:
        with pytest.raises(IntegrityError):
            await execute(session, insert(orders), row)
        await session.rollback()
    with pytest.raises(IntegrityViolationError):
        async with session_scope(sessions) as session:
            await execute(session, insert(orders), row)
    failed = [
        s
        for s in span_exporter.get_finished_spans()
        if s.name == "INSERT orders" and s.status.status_code.name == "ERROR"
    ]
    assert len(failed) == 2


async def test_what_cannot_go_below_goes_through_session_execute(
    engine: AsyncEngine, below: list[str]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("only SQLite's connection is taken directly")
    sessions = create_session_factory(engine)
    async with session_scope(sessions) as session:
        # A multi-row RETURNING (one multi-row INSERT), an expanding IN.
        rows = (await execute(session, INSERT_RETURNING, [decision("a"), decision("b")])).all()
        known = (await execute(session, KNOWN, {"ids": ["a", "b", "zz"]})).scalars().all()
    assert [cid for _, cid in sorted(rows)] == ["a", "b"]
    assert sorted(known) == ["a", "b"]
    assert below == ["INSERT", "SELECT"]
    # Someone listening to the engine's statements sees every one.
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.split()[0])

    event.listen(engine.sync_engine, "before_cursor_execute", listen)
    try:
        async with session_scope(sessions) as session:
            await execute(session, INSERT, decision("c"))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listen)
    assert seen == ["INSERT"]
    assert below[-1] == "INSERT"
