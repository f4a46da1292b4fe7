"""Outbox relays of several replicas: claims keep a row to one relay; a dead relay's expire."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.infra.db import DatabaseSettings, create_engine, create_session_factory, session_scope
from backend.infra.db.models import OutboxEvent
from backend.infra.eventbus import EventBusSettings, EventPublisher
from backend.infra.observability import get_tracer
from backend.infra.outbox import Outbox, OutboxSettings
from tests.support.factories import fill_event
from tests.support.polling import eventually

# A publish that times out may have landed, and is published again (at least once); a timeout
# long enough for a loaded machine keeps the exactly-once counts below about the claims.
FAST = OutboxSettings(
    batch_size=20, publish_timeout_s=5.0, retry_backoff_s=0.05, retry_backoff_max_s=0.2
)
tracer = get_tracer(__name__)


def fill(n: int) -> Any:
    return fill_event(f"c-{n}-1", "BUY", "0.5", "100.5", "0.01", ts_ms=1_700_000_000_000 + n)


@pytest.fixture
async def other_sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A second engine on the same database: the other replica's connections."""
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def envelopes(client: Redis, settings: EventBusSettings) -> list[dict[str, Any]]:
    raw = await client.xrange(settings.stream_key("order.filled"))
    return [orjson.loads(fields[b"event"]) for _id, fields in raw]


async def unpublished(sessions: async_sessionmaker[AsyncSession]) -> list[OutboxEvent]:
    async with session_scope(sessions) as session:
        query = select(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        return list(await session.scalars(query))


async def commit_each_in_its_trace(
    outbox: Outbox, sessions: async_sessionmaker[AsyncSession], numbers: range
) -> dict[str, str]:
    """One transaction and one trace per fill; the trace id of each event id."""
    traces = {}
    for n in numbers:
        with tracer.start_as_current_span(f"order {n}") as span:
            async with session_scope(sessions) as session:
                event_id = outbox.add(session, fill(n))
        traces[event_id] = f"{span.get_span_context().trace_id:032x}"
    return traces


async def test_a_batch_goes_out_in_one_publish_each_event_in_its_own_trace(
    sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    outbox = Outbox(sessions, publisher, source="execution", settings=FAST)
    traces = await commit_each_in_its_trace(outbox, sessions, range(8))
    calls: list[int] = []
    publish_many = publisher.publish_many

    async def counted(items: Any) -> Any:
        items = list(items)
        calls.append(len(items))
        return await publish_many(items)

    monkeypatch.setattr(publisher, "publish_many", counted)
    assert await outbox.publish_pending() == 8
    assert calls == [8]
    published = await envelopes(client, settings)
    assert [e["id"] for e in published] == list(traces)
    assert {e["id"]: e["traceparent"].split("-")[1] for e in published} == traces


async def test_two_relays_of_one_source_publish_every_row_exactly_once(
    sessions: async_sessionmaker[AsyncSession],
    other_sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
) -> None:
    first = Outbox(
        sessions,
        EventPublisher(client, "execution", settings),
        source="execution",
        settings=FAST,
        relay_id="execution@replica-1",
    )
    second = Outbox(
        other_sessions,
        EventPublisher(client, "execution", settings),
        source="execution",
        settings=FAST,
        relay_id="execution@replica-2",
    )
    async with session_scope(sessions) as session:
        for n in range(200):
            first.add(session, fill(n))
    relays = [
        asyncio.create_task(first.run_relay(), name="relay-1"),
        asyncio.create_task(second.run_relay(), name="relay-2"),
    ]
    try:
        # More commits while both relays run, from both replicas.
        for n in range(200, 260):
            outbox, factory = (first, sessions) if n % 2 else (second, other_sessions)
            async with session_scope(factory) as session:
                outbox.add(session, fill(n))
            await asyncio.sleep(0)

        async def all_published() -> bool:
            return not await unpublished(sessions)

        await eventually(all_published, 30, "every row published")
    finally:
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
    copies = Counter(e["id"] for e in await envelopes(client, settings))
    assert len(copies) == 260
    assert max(copies.values()) == 1, [i for i, c in copies.items() if c > 1][:5]
    async with session_scope(sessions) as session:
        claimed_by = set(await session.scalars(select(OutboxEvent.claimed_by)))
    assert claimed_by <= {"execution@replica-1", "execution@replica-2"}


async def test_the_rows_of_a_dead_relay_are_taken_over_once_its_claim_expires(
    sessions: async_sessionmaker[AsyncSession],
    other_sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
) -> None:
    short = OutboxSettings(publish_timeout_s=1.0, claim_s=1.5)
    dead = Outbox(
        sessions,
        EventPublisher(client, "execution", settings),
        source="execution",
        settings=short,
        relay_id="execution@replica-1",
    )
    alive = Outbox(
        other_sessions,
        EventPublisher(client, "execution", settings),
        source="execution",
        settings=short,
        relay_id="execution@replica-2",
    )
    await commit_each_in_its_trace(dead, sessions, range(3))
    claimed = await dead._claim_batch()  # then the process died, before publishing
    assert len(claimed) == 3

    assert await alive.publish_pending() == 0, "a live claim is left alone"
    assert await envelopes(client, settings) == []

    async def taken_over() -> bool:
        return await alive.publish_pending() == 3

    await eventually(taken_over, 10, "the expired claim taken over")
    assert len(await envelopes(client, settings)) == 3
    async with session_scope(sessions) as session:
        rows = list(await session.scalars(select(OutboxEvent)))
    assert {(r.claimed_by, r.published_at is not None) for r in rows} == {
        ("execution@replica-2", True)
    }


async def test_an_idle_relay_takes_over_a_dead_relays_rows_without_a_commit_of_its_own(
    sessions: async_sessionmaker[AsyncSession],
    other_sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
) -> None:
    short = OutboxSettings(publish_timeout_s=1.0, claim_s=1.5)
    publisher = EventPublisher(client, "execution", settings)
    dead = Outbox(sessions, publisher, source="execution", settings=short, relay_id="x@1")
    alive = Outbox(other_sessions, publisher, source="execution", settings=short, relay_id="x@2")
    traces = await commit_each_in_its_trace(dead, sessions, range(3))
    assert len(await dead._claim_batch()) == 3  # then the process died, before publishing
    relay = asyncio.create_task(alive.run_relay(), name="test-outbox-relay")
    try:

        async def published() -> bool:
            # On the bus, and marked published (the mark follows the publish: a relay stopped
            # in between publishes the rows again, which consumers skip by event id).
            on_bus = {e["id"] for e in await envelopes(client, settings)} == set(traces)
            return on_bus and not await unpublished(sessions)

        await eventually(published, 10, "the dead relay's rows published by the idle one")
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
    assert len(await envelopes(client, settings)) == 3, "each row published once"


async def test_the_relay_id_is_the_source_at_the_replica_name(client: Redis) -> None:
    named = EventPublisher(client, "execution", EventBusSettings(consumer_name="pod-7"))
    outbox = Outbox(async_sessionmaker(), named, source="execution")
    assert outbox.relay_id == "execution@pod-7"
    assert OutboxSettings.from_env({"OUTBOX_CLAIM_S": "30"}).claim_s == 30.0
