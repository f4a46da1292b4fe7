"""A commit's events go out from memory: one transaction per round, nothing read back, and
never an event whose transaction rolled back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.infra.db import session_scope
from backend.infra.db.models import OutboxEvent
from backend.infra.eventbus import EventBusSettings, EventPublisher
from backend.infra.outbox import Outbox, OutboxSettings
from tests.infra.outbox.test_outbox import entries, fill, rows
from tests.support.polling import eventually

FAST = OutboxSettings(publish_timeout_s=0.5, retry_backoff_s=0.05, retry_backoff_max_s=0.2)


@contextmanager
def statements(sessions: async_sessionmaker[AsyncSession]) -> Iterator[list[str]]:
    """Every SQL statement sent while the block runs, comments stripped."""
    sent: list[str] = []
    engine = sessions.kw["bind"].sync_engine

    def capture(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        sent.append(" ".join(statement.split("/*")[0].split()))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", capture)


async def test_a_round_after_a_commit_is_one_update_and_no_claim(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    outbox = Outbox(
        sessions, EventPublisher(client, "execution", settings), source="x", settings=FAST
    )
    assert await outbox.publish_pending() == 0  # the start-up read of older rows
    async with session_scope(sessions) as session:
        ids = await outbox.add_many(session, [fill(1), fill(2), fill(3)])
    with statements(sessions) as sent:
        assert await outbox.publish_pending() == 3
    assert [s.split()[0] for s in sent] == ["UPDATE"], sent
    assert "RETURNING" not in sent[0]
    stored = await rows(sessions)
    assert [r.event_id for r in stored] == ids
    assert all(r.published_at is not None and r.attempts == 1 for r in stored)
    assert [e["id"] for e in await entries(client, settings, "order.filled")] == ids


async def test_add_many_is_one_insert_and_a_rolled_back_batch_is_never_published(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    outbox = Outbox(
        sessions, EventPublisher(client, "execution", settings), source="x", settings=FAST
    )
    assert await outbox.publish_pending() == 0
    with pytest.raises(RuntimeError):
        async with session_scope(sessions) as session:
            with statements(sessions) as sent:
                await outbox.add_many(session, [fill(n) for n in range(1, 6)])
            raise RuntimeError("the change failed")
    assert len(sent) == 1 and sent[0].startswith("INSERT INTO outbox_events"), sent
    async with session_scope(sessions) as session:
        kept = outbox.add(session, fill(6))
    assert await outbox.publish_pending() == 1
    assert [e["id"] for e in await entries(client, settings, "order.filled")] == [kept]
    async with session_scope(sessions) as session:
        assert list(await session.scalars(select(OutboxEvent.event_id))) == [kept]


async def test_after_a_failed_round_the_table_is_read_in_order(
    sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    outbox = Outbox(sessions, publisher, source="x", settings=FAST)
    assert await outbox.publish_pending() == 0
    async with session_scope(sessions) as session:
        first = await outbox.add_many(session, [fill(1), fill(2)])
    real = publisher.publish_many

    async def down(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(publisher, "publish_many", down)
    assert await outbox.publish_pending() == 0
    assert outbox.failing
    async with session_scope(sessions) as session:
        second = await outbox.add_many(session, [fill(3)])
    monkeypatch.setattr(publisher, "publish_many", real)
    assert await outbox._drain() == 3
    assert [e["id"] for e in await entries(client, settings, "order.filled")] == first + second
    assert all(r.published_at is not None for r in await rows(sessions))


def marking_late(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> Outbox:
    """An outbox whose relay gathers its marks for a minute (and claims for two)."""
    return Outbox(
        sessions,
        EventPublisher(client, "execution", settings),
        source="x",
        settings=OutboxSettings(mark_delay_s=60.0, claim_s=120.0),
    )


async def test_the_relay_marks_the_rounds_of_its_mark_delay_in_one_update_and_on_stopping(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    outbox = marking_late(sessions, client, settings)
    relay = asyncio.create_task(outbox.run_relay(), name="test-outbox-relay")
    try:
        await eventually(lambda: outbox._covered >= outbox._committed, 5, "the relay's start")
        ids: list[str] = []
        with statements(sessions) as sent:
            for n in (1, 2, 3):  # one order at a time: a relay round each
                async with session_scope(sessions) as session:
                    ids += await outbox.add_many(session, [fill(n)])

                async def out(count: int = n) -> bool:
                    return len(await entries(client, settings, "order.filled")) == count

                await eventually(out, 5, f"event {n} on the stream")
            assert [s for s in sent if s.startswith("UPDATE")] == [], "a mark per round"
            assert all(r.published_at is None for r in await rows(sessions))
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        marks = [s for s in sent if s.startswith("UPDATE")]
        assert len(marks) == 1 and "RETURNING" not in marks[0], sent  # a mark, not a claim
        stored = await rows(sessions)
        assert [r.event_id for r in stored] == ids
        assert all(r.published_at is not None and r.attempts == 1 for r in stored)
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)


async def test_events_published_but_not_yet_marked_are_marked_before_the_table_is_read(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    outbox = marking_late(sessions, client, settings)
    assert await outbox._drain() == 0  # the start-up read of older rows
    async with session_scope(sessions) as session:
        ids = await outbox.add_many(session, [fill(1), fill(2)])
    assert await outbox._drain() == 2  # a relay round: published, the marks not due
    assert all(r.published_at is None for r in await rows(sessions))
    outbox._committed += 1  # a reason to read the table (a failed round, an idle relay)
    assert await outbox._drain() == 0
    assert [e["id"] for e in await entries(client, settings, "order.filled")] == ids
    assert all(r.published_at is not None for r in await rows(sessions))
    async with session_scope(sessions) as session:
        later = await outbox.add_many(session, [fill(3)])
    assert await outbox._drain() == 1
    assert await outbox.publish_pending() == 0  # marks what is published, at once
    assert all(r.published_at is not None for r in await rows(sessions))
    assert [e["id"] for e in await entries(client, settings, "order.filled")] == ids + later
