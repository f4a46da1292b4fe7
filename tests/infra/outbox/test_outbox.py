"""The outbox: events commit with the change, publish after it, survive outages and crashes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.infra.db import session_scope
from backend.infra.db.models import OutboxEvent
from backend.infra.eventbus import (
    EmbeddedRedis,
    Event,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
    create_redis_client,
)
from backend.infra.observability import get_tracer
from backend.infra.outbox import Outbox, OutboxConfigError, OutboxSettings
from backend.infra.outbox._outbox import retry_delay_s
from backend.trading.events import OrderAccepted, OrderFilled
from tests.support.factories import fill_event
from tests.support.metrics import metric
from tests.support.polling import eventually

FAST = OutboxSettings(publish_timeout_s=0.5, retry_backoff_s=0.05, retry_backoff_max_s=0.2)
tracer = get_tracer(__name__)


def fill(n: int) -> OrderFilled:
    """The n-th of a run of fills, alike but for their ids and times."""
    return fill_event(f"o-{n}-1", "BUY", "0.5", "64000.10", "0.032", ts_ms=1_700_000_000_000 + n)


async def entries(client: Redis, settings: EventBusSettings, stream: str) -> list[dict[str, Any]]:
    """Every envelope on `stream`, oldest first."""
    raw = await client.xrange(settings.stream_key(stream))
    return [orjson.loads(fields[b"event"]) for _id, fields in raw]


async def rows(sessions: async_sessionmaker[AsyncSession]) -> list[OutboxEvent]:
    async with session_scope(sessions) as session:
        return list(await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


async def commit_traced(
    outbox: Outbox, sessions: async_sessionmaker[AsyncSession], *items: Any
) -> str:
    """Add `items` in one transaction inside a span of their own; returns that span's trace id."""
    with tracer.start_as_current_span("business change") as span:
        async with session_scope(sessions) as session:
            for item in items:
                outbox.add(session, item)
    return f"{span.get_span_context().trace_id:032x}"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A Redis of this test alone (free port), so stopping it leaves the shared one alone."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_rows_commit_and_roll_back_with_the_callers_transaction(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    outbox = Outbox(sessions, EventPublisher(client, "execution", settings), source="execution")
    with pytest.raises(RuntimeError):
        async with session_scope(sessions) as session:
            outbox.add(session, fill(1))
            raise RuntimeError("the business change failed")
    assert await rows(sessions) == []

    trace_id = await commit_traced(outbox, sessions, fill(2))
    (row,) = await rows(sessions)
    assert (row.event_type, row.source, row.published_at, row.attempts) == (
        "order.filled",
        "execution",
        None,
        0,
    )
    assert row.traceparent is not None and row.traceparent.split("-")[1] == trace_id


async def test_publish_pending_publishes_in_order_with_the_stored_id_time_and_trace(
    sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
    span_exporter: Any,
) -> None:
    outbox = Outbox(sessions, EventPublisher(client, "execution", settings), source="execution")
    chosen = Event(
        id="chosen-id",
        type="order.filled",
        source="execution",
        time=datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        data=fill(0),
    )
    first = await commit_traced(outbox, sessions, chosen, fill(1))
    second = await commit_traced(outbox, sessions, fill(2))

    assert await outbox.publish_pending() == 3
    assert await outbox.publish_pending() == 0
    published = await entries(client, settings, "order.filled")
    stored = await rows(sessions)
    assert [e["id"] for e in published] == [r.event_id for r in stored]
    assert published[0]["id"] == "chosen-id"
    assert published[0]["time"] == "2025-01-02T03:04:05.123456Z"
    assert [e["data"]["fill_id"] for e in published] == ["o-0-1", "o-1-1", "o-2-1"]
    assert [e["traceparent"].split("-")[1] for e in published] == [first, first, second]
    assert all(r.published_at is not None and r.attempts == 1 for r in stored)

    # The PRODUCER spans are children of the span that wrote the rows.
    sends = [s for s in span_exporter.get_finished_spans() if s.name == "send order.filled"]
    changes = [s for s in span_exporter.get_finished_spans() if s.name == "business change"]
    assert [s.parent.span_id for s in sends] == [
        changes[0].context.span_id,
        changes[0].context.span_id,
        changes[1].context.span_id,
    ]


async def test_a_redis_outage_after_the_commit_delays_events_and_loses_none(
    sessions: async_sessionmaker[AsyncSession], own_redis: EmbeddedRedis, settings: EventBusSettings
) -> None:
    client = create_redis_client(own_redis.url)
    source = f"svc-{settings.prefix[-12:]}"
    outbox = Outbox(
        sessions, EventPublisher(client, source, settings), source=source, settings=FAST
    )
    relay = asyncio.create_task(outbox.run_relay(), name="test-outbox-relay")
    try:
        before = await commit_traced(outbox, sessions, fill(0))
        await outbox.publish_pending()  # the relay, woken by the commit, may have beaten it
        assert all(r.published_at is not None for r in await rows(sessions))

        own_redis.stop()  # the commit succeeds; Redis is gone before anything is published
        traces = [before]
        for n in range(1, 6):
            traces.append(
                await commit_traced(
                    outbox,
                    sessions,
                    OrderAccepted(client_order_id=f"o-{n}", symbol="BTCUSDT"),
                    fill(n),
                )
            )
            assert await outbox.publish_pending() == 0  # the relay owns it now
        assert outbox.failing
        await eventually(lambda: metric("outbox_pending_events", source=source) == 10, 5, "gauge")
        assert metric("outbox_oldest_pending_age_seconds", source=source) > 0
        assert metric("outbox_publish_failures_total", source=source) >= 1
        assert any(r.last_error and r.attempts for r in await rows(sessions))

        own_redis.start()  # same port and data: what was published before is still there

        async def all_published() -> bool:
            return all(r.published_at is not None for r in await rows(sessions))

        await eventually(all_published, 20, "the relay to publish the backlog")
        assert not outbox.failing
        assert metric("outbox_pending_events", source=source) == 0
        assert metric("outbox_oldest_pending_age_seconds", source=source) == 0

        fills = await entries(client, settings, "order.filled")
        accepted = await entries(client, settings, "order.accepted")
        stored = {r.event_id: r for r in await rows(sessions)}
        # Exactly once per event id, in commit order, each with its producer's trace id.
        assert [e["data"]["fill_id"] for e in fills] == [f"o-{n}-1" for n in range(6)]
        assert [e["data"]["client_order_id"] for e in accepted] == [f"o-{n}" for n in range(1, 6)]
        published = fills + accepted
        assert sorted(e["id"] for e in published) == sorted(stored)
        assert [e["traceparent"].split("-")[1] for e in fills] == traces
        assert [e["traceparent"].split("-")[1] for e in accepted] == traces[1:]
        for e in published:
            assert e["traceparent"].split("-")[1] == stored[e["id"]].traceparent.split("-")[1]
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await client.aclose()


async def test_the_relay_publishes_on_start_what_a_stopped_process_left(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    gone = Outbox(sessions, publisher, source="execution", settings=FAST)
    trace_id = await commit_traced(gone, sessions, fill(1), fill(2))  # then the process died

    restarted = Outbox(sessions, publisher, source="execution", settings=FAST)
    relay = asyncio.create_task(restarted.run_relay(), name="test-outbox-relay")
    try:

        async def published() -> bool:
            return len(await entries(client, settings, "order.filled")) == 2

        await eventually(published, 10, "the relay to publish on start")
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
    envelopes = await entries(client, settings, "order.filled")
    assert {e["traceparent"].split("-")[1] for e in envelopes} == {trace_id}


async def test_a_crash_between_publish_and_mark_republishes_the_same_id_applied_once(
    sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    crashing = Outbox(sessions, publisher, source="execution", settings=FAST)
    await commit_traced(crashing, sessions, fill(1))

    async def die(*_args: object) -> None:
        raise SystemError("process died after the publish, before the mark")

    monkeypatch.setattr(crashing, "_mark_published", die)
    with pytest.raises(SystemError):
        await crashing._drain()
    (row,) = await rows(sessions)
    assert row.published_at is None  # the mark never happened

    restarted = Outbox(sessions, publisher, source="execution", settings=FAST)
    assert await restarted.publish_pending() == 1
    envelopes = await entries(client, settings, "order.filled")
    assert [e["id"] for e in envelopes] == [row.event_id, row.event_id]

    applied: list[str] = []

    async def on_fill(event: Event[OrderFilled]) -> None:
        applied.append(event.id)

    consumer = EventConsumer(
        client,
        "portfolio",
        settings,
        consumer_name="c",
        idempotency=Idempotency(client, "portfolio", settings),
    )
    consumer.subscribe(OrderFilled, on_fill)
    async with consumer:

        async def both_handled() -> bool:
            groups = await client.xinfo_groups(settings.stream_key("order.filled"))
            last = (await client.xrevrange(settings.stream_key("order.filled"), count=1))[0][0]
            return bool(groups[0]["last-delivered-id"] == last and groups[0]["pending"] == 0)

        await eventually(both_handled, 10, "both copies to be handled")
    assert applied == [row.event_id]


def test_settings_come_from_the_environment_and_bad_values_name_the_variable() -> None:
    assert OutboxSettings.from_env({"OUTBOX_BATCH_SIZE": "7"}).batch_size == 7
    with pytest.raises(OutboxConfigError, match="OUTBOX_PUBLISH_TIMEOUT_S"):
        OutboxSettings.from_env({"OUTBOX_PUBLISH_TIMEOUT_S": "0"})
    with pytest.raises(OutboxConfigError, match="OUTBOX_BATCH_SIZE"):
        OutboxSettings.from_env({"OUTBOX_BATCH_SIZE": "many"})


def test_the_relay_never_pauses_longer_than_its_cap() -> None:
    """However long the outage, the relay tries again within `retry_backoff_max_s` (1 s)."""
    defaults = OutboxSettings()
    assert defaults.retry_backoff_max_s == 1.0
    delays = [retry_delay_s(defaults, failures) for failures in range(1, 40)]
    assert max(delays) <= 1.0
    assert delays[0] <= defaults.retry_backoff_s


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_after_a_long_outage_the_backlog_goes_out_within_about_a_second(
    sessions: async_sessionmaker[AsyncSession], own_redis: EmbeddedRedis, settings: EventBusSettings
) -> None:
    """Redis stopped for 6 s (an uncapped doubling back-off would be at 4 s and growing), then
    started again: the relay notices at its next try, at most a second later."""
    client = create_redis_client(own_redis.url)
    source = f"svc-{settings.prefix[-12:]}"
    outbox = Outbox(sessions, EventPublisher(client, source, settings), source=source)
    relay = asyncio.create_task(outbox.run_relay(), name="test-outbox-relay")
    try:
        own_redis.stop()
        await commit_traced(outbox, sessions, fill(1))
        # A request that must answer fast is told "queued", not kept waiting on Redis.
        started = time.monotonic()
        assert await outbox.publish_within(0.3) is False
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(6.0)
        assert outbox.failing
        own_redis.start()
        back = time.monotonic()

        async def all_published() -> bool:
            return all(r.published_at is not None for r in await rows(sessions))

        await eventually(all_published, 10, "the relay to publish the backlog")
        took_s = time.monotonic() - back
        print(f"backlog published {took_s:.2f} s after Redis came back")
        # 1 s of back-off at most, plus a reconnect and the publish on a busy machine.
        assert took_s < 3.0
        assert [e["data"]["fill_id"] for e in await entries(client, settings, "order.filled")] == [
            "o-1-1"
        ]
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await client.aclose()


def test_events_made_together_share_the_active_trace_context_and_not_their_ids() -> None:
    publisher = SimpleNamespace(settings=EventBusSettings())
    outbox = Outbox(None, publisher, source="execution")  # type: ignore[arg-type]
    data = [OrderAccepted(client_order_id=f"o-{n}", symbol="BTCUSDT") for n in range(3)]
    with tracer.start_as_current_span("business change") as span:
        made = outbox.events(data)
        one = outbox.event(data[0])
    assert [e.data for e in made] == data
    assert len({e.id for e in made}) == 3
    assert {e.traceparent for e in made} == {one.traceparent}
    assert f"{span.get_span_context().trace_id:032x}" in str(one.traceparent)
    assert {e.type for e in made} == {one.type} and {e.source for e in made} == {"execution"}


async def all_published(sessions: async_sessionmaker[AsyncSession]) -> bool:
    return all(r.published_at is not None for r in await rows(sessions))


@asynccontextmanager
async def relay_running(
    sessions: async_sessionmaker[AsyncSession],
    client: Redis,
    settings: EventBusSettings,
    *,
    reply_hold_s: float,
) -> AsyncIterator[Outbox]:
    """An outbox of its own source whose relay has started (read what it left), stopped after."""
    source = f"svc-{settings.prefix[-12:]}"
    outbox = Outbox(
        sessions,
        EventPublisher(client, source, settings),
        source=source,
        settings=OutboxSettings(reply_hold_s=reply_hold_s),
    )
    relay = asyncio.create_task(outbox.run_relay(), name="test-outbox-relay")
    try:
        await eventually(lambda: outbox._covered >= outbox._committed, 5, "the relay's start")
        yield outbox
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)


async def test_a_hold_keeps_the_relay_off_until_the_answer_is_sent(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    async with relay_running(sessions, client, settings, reply_hold_s=30.0) as outbox:

        def published() -> Awaitable[bool]:
            return all_published(sessions)

        hold = outbox.hold()  # a request about to commit, then answer
        hold.add(1)  # ... answering for one more request of its batch
        await commit_traced(outbox, sessions, fill(1))
        hold.release()
        await asyncio.sleep(0.2)  # the relay, woken by the commit, had every chance to run
        assert not await published(), "published while the answers were not sent"
        assert await entries(client, settings, "order.filled") == []
        hold.release()  # the last answer is sent
        await eventually(published, 5, "the relay to publish once the hold is released")
        hold.release()  # one release too many changes nothing
        # Without a hold, a commit wakes the relay at once.
        await commit_traced(outbox, sessions, fill(2))
        await eventually(published, 5, "the relay to publish an unheld commit")


async def test_a_hold_never_released_delays_events_by_the_limit_and_no_more(
    sessions: async_sessionmaker[AsyncSession], client: Redis, settings: EventBusSettings
) -> None:
    async with relay_running(sessions, client, settings, reply_hold_s=0.05) as outbox:

        def published() -> Awaitable[bool]:
            return all_published(sessions)

        outbox.hold()  # a request that never says its answer is sent
        await commit_traced(outbox, sessions, fill(1))
        await eventually(published, 5, "the relay to publish once the hold is overdue")
        assert not outbox._holds, "an overdue hold holds nothing later"
        await commit_traced(outbox, sessions, fill(2))
        await eventually(published, 5, "the relay to publish the next commit")
        fills = await entries(client, settings, "order.filled")
        assert [e["data"]["fill_id"] for e in fills] == ["o-1-1", "o-2-1"]
