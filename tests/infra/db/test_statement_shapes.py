"""A statement's span attributes are worked out once per SQL text, and stay exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.infra.db import (
    DatabaseSettings,
    _instrument,
    create_engine,
    create_session_factory,
    migrate,
    session_scope,
)
from backend.infra.db.models import OrderRecord


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=database_url, service_name="db-tests"))
    await migrate(engine)
    yield engine
    await engine.dispose()


def _spans_of(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT" and s.name == name]


async def test_a_repeated_statement_is_described_once_with_the_same_attributes(
    engine: AsyncEngine, span_exporter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[object] = []
    walk = _instrument._operation_and_collection

    def counted(context: Any) -> tuple[str | None, str | None]:
        walks.append(context)
        return walk(context)

    monkeypatch.setattr(_instrument, "_operation_and_collection", counted)
    sessions = create_session_factory(engine)
    query = select(OrderRecord.id).where(OrderRecord.client_order_id == "shape-probe")
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
        sent.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        for _ in range(5):
            async with session_scope(sessions) as session:
                await session.execute(query)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    spans = _spans_of(span_exporter, "SELECT orders")
    assert len(spans) == 5
    assert len(walks) == 1, "the compiled statement is walked once, not per execution"
    first = dict(spans[0].attributes)
    assert first["db.operation.name"] == "SELECT"
    assert first["db.collection.name"] == "orders"
    assert all(dict(s.attributes) == first for s in spans[1:])

    statement, params = sent[0]
    async with session_scope(sessions) as session:
        # The very same SQL sent as it is: described by its summary alone, as the conventions
        # ask, although the built statement's description is kept for that text.
        conn = await session.connection()
        await conn.exec_driver_sql(statement.split("/*")[0], params)
    raw = _spans_of(span_exporter, "SELECT orders")[-1]
    assert "db.operation.name" not in raw.attributes
    assert raw.attributes["db.query.summary"] == "SELECT orders"
