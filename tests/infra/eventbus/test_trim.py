"""Trimming streams to what every consumer group has acknowledged, against a real Redis."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio import Redis

from backend.infra.eventbus import (
    Event,
    EventBusConfigError,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
)
from backend.infra.eventbus._trim import acknowledged_bound, trim_acknowledged
from backend.trading.events import OrderFilled

from .support import eventually
from .worker import fill


async def _ids(client: Redis, key: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await client.xrange(key)]


async def test_trim_keeps_everything_a_group_has_not_acknowledged(
    client: Redis, settings: EventBusSettings
) -> None:
    key = settings.stream_key("order.filled")
    ids = [await client.xadd(key, {"n": str(i)}) for i in range(10)]
    ids = [i.decode() for i in ids]
    # No group yet: nobody said what is still needed, nothing is trimmed.
    assert await acknowledged_bound(client, key) is None
    assert await trim_acknowledged(client, key) == 0 and len(await _ids(client, key)) == 10

    await client.xgroup_create(key, "fast", "0")
    await client.xgroup_create(key, "slow", "0")
    # "fast" reads 8 and acknowledges 6 (entries 2 and 6 stay pending); "slow" reads 5, acks all.
    fast = await client.xreadgroup("fast", "c1", {key: ">"}, count=8)
    fast_ids = [e[0].decode() for e in fast[0][1]]
    await client.xack(key, "fast", *[i for i in fast_ids if i not in (ids[2], ids[6])])
    slow = await client.xreadgroup("slow", "c1", {key: ">"}, count=5)
    await client.xack(key, "slow", *[e[0] for e in slow[0][1]])

    # fast needs ids[2] onwards (oldest pending), slow needs ids[4] on (last delivered, kept).
    assert await acknowledged_bound(client, key) == ids[2]
    assert await trim_acknowledged(client, key) == 2
    assert await _ids(client, key) == ids[2:]

    # Acknowledging the pending entries moves fast's bound to its last delivered (ids[7]); slow
    # at ids[4] is now the lowest.
    await client.xack(key, "fast", ids[2], ids[6])
    assert await trim_acknowledged(client, key) == 2
    assert await _ids(client, key) == ids[4:]

    # A group that has read nothing keeps the whole stream.
    await client.xgroup_create(key, "new", "0")
    assert await acknowledged_bound(client, key) == "0-0"
    assert await trim_acknowledged(client, key) == 0 and await _ids(client, key) == ids[4:]


async def test_running_consumers_trim_their_streams_once_every_group_acknowledged(
    client: Redis, settings: EventBusSettings
) -> None:
    settings = dataclasses.replace(settings, trim_interval_s=0.1)
    key = settings.stream_key("order.filled")
    publisher = EventPublisher(client, "execution", settings)
    portfolio = EventConsumer(client, "portfolio", settings, consumer_name="p1")
    audit = EventConsumer(client, "audit", settings, consumer_name="a1")
    booked: list[int] = []
    audited: list[int] = []

    async def on_book(event: Event[OrderFilled]) -> None:
        booked.append(event.deliveries)

    async def on_audit(event: Event[OrderFilled]) -> None:
        audited.append(event.deliveries)

    portfolio.subscribe(OrderFilled, on_book)
    audit.subscribe(OrderFilled, on_audit)
    await portfolio.ensure_groups()
    await audit.ensure_groups()
    await publisher.publish_many([fill(i) for i in range(1, 51)])
    async with portfolio:
        await eventually(lambda: len(booked) == 50, what="the portfolio's 50 fills")
        # The audit group has read nothing: nothing may go although the portfolio acked all.
        assert await portfolio.trim_streams() == 0
        assert await client.xlen(key) == 50
        async with audit:
            await eventually(lambda: len(audited) == 50, what="the audit's 50 fills")

            async def trimmed() -> bool:
                return int(await client.xlen(key)) == 1

            # Both groups acknowledged everything: only the last delivered entry stays.
            await eventually(trimmed, what="the trim by the running consumers")
    assert len(booked) == 50 and len(audited) == 50


def test_trim_interval_is_read_from_the_environment_and_checked() -> None:
    assert EventBusSettings.from_env({"EVENTBUS_TRIM_INTERVAL_S": "0"}).trim_interval_s == 0
    with pytest.raises(EventBusConfigError, match="EVENTBUS_TRIM_INTERVAL_S"):
        EventBusSettings.from_env({"EVENTBUS_TRIM_INTERVAL_S": "-1"})
