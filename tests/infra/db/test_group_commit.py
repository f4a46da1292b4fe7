"""Group commit: writers that queue behind a commit share the next one; a bad write fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.infra.db import (
    DatabaseSettings,
    GroupCommit,
    GroupWrite,
    IntegrityViolationError,
    create_engine,
    create_session_factory,
    migrate,
)
from backend.infra.db.models import OrderRecord
from tests.support.factories import order_record


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, list[int]]]:
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    await migrate(engine)
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda _conn: commits.append(1))
    yield engine, commits
    await engine.dispose()


def stage_order(cid: str) -> Callable[[AsyncSession], Callable[[], int]]:
    def stage(session: AsyncSession) -> Callable[[], int]:
        row = order_record(cid)
        session.add(row)
        return lambda: row.id

    return stage


async def count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OrderRecord)) or 0)


async def test_writes_queued_behind_a_commit_share_the_next_transaction(
    database: tuple[AsyncEngine, list[int]],
) -> None:
    engine, commits = database
    sessions = create_session_factory(engine)
    group = GroupCommit(sessions)
    # The first write starts a commit at once; the nine that arrive meanwhile go together.
    ids = await asyncio.gather(*(group.write(stage_order(f"g-{i}")) for i in range(10)))
    assert len(commits) == 2
    assert sorted(ids) == ids and len(set(ids)) == 10  # each caller gets its own row's id
    assert await count(sessions) == 10


async def test_a_failing_write_fails_only_its_caller(
    database: tuple[AsyncEngine, list[int]],
) -> None:
    engine, _ = database
    sessions = create_session_factory(engine)
    group = GroupCommit(sessions)
    await group.write(stage_order("taken"))
    outcomes = await asyncio.gather(
        group.write(stage_order("first")),
        group.write(stage_order("a")),
        group.write(stage_order("taken")),  # a duplicate client order id
        group.write(stage_order("b")),
        return_exceptions=True,
    )
    assert [type(o) for o in outcomes] == [int, int, IntegrityViolationError, int]
    assert await count(sessions) == 4


async def test_a_group_write_hands_each_batch_to_one_call_and_retries_a_failed_one_item_by_item(
    database: tuple[AsyncEngine, list[int]],
) -> None:
    engine, commits = database
    sessions = create_session_factory(engine)
    batches: list[list[str]] = []

    async def write_batch(session: AsyncSession, cids: list[str]) -> list[int]:
        batches.append(cids)
        rows = [order_record(cid) for cid in cids]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]

    group: GroupWrite[str, int] = GroupWrite(sessions, write_batch)
    ids = await asyncio.gather(*(group.write(f"w-{i}") for i in range(6)))
    # The first write commits alone; the five queued meanwhile are one call, one commit.
    assert batches == [["w-0"], [f"w-{i}" for i in range(1, 6)]]
    assert len(commits) == 2 and sorted(ids) == ids and len(set(ids)) == 6
    batches.clear()
    outcomes = await asyncio.gather(
        group.write("first"),
        group.write("a"),
        group.write("w-3"),  # a duplicate client order id: its batch fails
        group.write("b"),
        return_exceptions=True,
    )
    assert batches == [["first"], ["a", "w-3", "b"], ["a"], ["w-3"], ["b"]]
    assert [type(o) for o in outcomes] == [int, int, IntegrityViolationError, int]
    assert await count(sessions) == 9
