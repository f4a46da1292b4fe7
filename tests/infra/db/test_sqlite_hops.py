"""On SQLite a statement runs on the event loop's thread, no hop, and reads the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.infra.db import (
    DatabaseSettings,
    create_engine,
    create_session_factory,
    migrate,
    session_scope,
)
from backend.infra.db.models import OutboxEvent


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hops.db'}"
    engine = create_engine(DatabaseSettings(url=url, service_name="db-tests"))
    await migrate(engine)
    yield engine
    await engine.dispose()


def _row(n: int) -> dict[str, Any]:
    return {
        "event_id": f"hop-{n}",
        "source": "hops",
        "event_type": "order.filled",
        "schema_version": 1,
        "event_time": datetime.now(UTC),
        "data": "{}",
        "attempts": 0,
    }


async def test_each_statement_and_the_commit_run_without_a_hop(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = create_session_factory(engine)
    async with session_scope(sessions) as session:  # the pool's connection, opened
        await session.execute(select(1))
    hops: list[Any] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    async with session_scope(sessions) as session:
        await session.execute(insert(OutboxEvent), [_row(n) for n in range(3)])  # executemany
        await session.execute(insert(OutboxEvent).values(**_row(3)))
        claimed = await session.scalars(
            update(OutboxEvent)
            .where(OutboxEvent.event_id.in_(["hop-1", "hop-2"]))
            .values(attempts=OutboxEvent.attempts + 1)
            .returning(OutboxEvent.event_id)
        )
        assert sorted(claimed) == ["hop-1", "hop-2"]
        count = await session.scalar(select(func.count()).select_from(OutboxEvent))
    assert count == 4
    # Four statements and the commit, none sent to the connection's thread, where the stock
    # adapter takes about four hops per statement (cursor, execute, fetch, close).
    assert hops == []
    async with session_scope(sessions) as session:
        result = await session.execute(
            update(OutboxEvent).where(OutboxEvent.attempts == 1).values(attempts=2)
        )
        assert result.rowcount == 2  # type: ignore[attr-defined]
