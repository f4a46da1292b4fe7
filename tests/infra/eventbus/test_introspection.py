"""GroupMonitor against a real Redis: pending entries, lag and a group's own dead letters."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.infra.eventbus import (
    EventBusSettings,
    EventBusUnavailable,
    EventConsumer,
    EventPublisher,
    GroupBacklog,
    GroupMonitor,
    create_redis_client,
)
from backend.trading.events import OrderFilled
from tests.support.procs import free_port

from .support import eventually
from .worker import fill


async def test_a_stream_nobody_created_has_an_unknown_lag(
    client: Redis, settings: EventBusSettings
) -> None:
    backlog = await GroupMonitor(client, "portfolio", "order.filled", settings).backlog()
    assert backlog == GroupBacklog(pending=0, lag=None, dead_letters=0)
    assert not backlog.clear


async def test_undelivered_and_unacknowledged_entries_are_lag_and_pending(
    client: Redis, settings: EventBusSettings
) -> None:
    key = settings.stream_key("order.filled")
    monitor = GroupMonitor(client, "portfolio", "order.filled", settings)
    await client.xgroup_create(key, "portfolio", "0", mkstream=True)
    assert await monitor.backlog() == GroupBacklog(pending=0, lag=0, dead_letters=0)

    await EventPublisher(client, "execution", settings).publish_many([fill(1), fill(2), fill(3)])
    assert await monitor.backlog() == GroupBacklog(pending=0, lag=3, dead_letters=0)

    delivered = await client.xreadgroup("portfolio", "c1", {key: ">"}, count=2)
    assert await monitor.backlog() == GroupBacklog(pending=2, lag=1, dead_letters=0)

    await client.xack(key, "portfolio", *(entry_id for entry_id, _f in delivered[0][1]))
    await client.xreadgroup("portfolio", "c1", {key: ">"})
    assert await monitor.backlog() == GroupBacklog(pending=1, lag=0, dead_letters=0)


async def test_lag_is_counted_when_redis_cannot_tell_it(
    client: Redis, settings: EventBusSettings
) -> None:
    key = settings.stream_key("order.filled")
    await client.xgroup_create(key, "portfolio", "0", mkstream=True)
    receipts = [
        await EventPublisher(client, "execution", settings).publish(fill(n)) for n in range(3)
    ]
    # Deleting an undelivered entry leaves Redis without a lag for the group.
    await client.xdel(key, receipts[1].entry_id)
    groups = await client.xinfo_groups(key)
    assert groups[0].get("lag") is None  # Redis 7 says None here; Redis 6 has no lag field
    backlog = await GroupMonitor(client, "portfolio", "order.filled", settings).backlog()
    assert backlog.lag == 2


async def test_only_the_groups_own_dead_letters_count_until_an_operator_removes_them(
    client: Redis, settings: EventBusSettings
) -> None:
    monitor = GroupMonitor(client, "portfolio", "order.filled", settings)
    other = GroupMonitor(client, "risk", "order.filled", settings)
    publisher = EventPublisher(client, "execution", settings)
    consumers = []
    for group in ("portfolio", "risk"):

        async def fail_on_two(event: Any, group: str = group) -> None:
            if group == "portfolio" and event.data.fill_id == "F2":
                raise RuntimeError("disk full")

        consumer = EventConsumer(client, group, replace(settings, max_deliveries=2))
        consumer.subscribe(OrderFilled, fail_on_two)
        consumers.append(consumer)
    await publisher.publish_many([fill(1), fill(2), fill(3)])
    for consumer in consumers:
        await consumer.start()
    try:

        async def settled() -> bool:
            return (await monitor.backlog()) == GroupBacklog(pending=0, lag=0, dead_letters=1)

        await eventually(settled, what="the failing fill dead-lettered")
        assert await other.backlog() == GroupBacklog(pending=0, lag=0, dead_letters=0)
    finally:
        for consumer in consumers:
            await consumer.stop()

    dead = await client.xrange(settings.dead_letter_key("order.filled"))
    await client.xdel(settings.dead_letter_key("order.filled"), dead[0][0])
    assert (await monitor.backlog()).clear


async def test_an_unreachable_redis_is_reported_at_once() -> None:
    client = create_redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(EventBusUnavailable):
            await GroupMonitor(client, "portfolio", "order.filled").backlog()
    finally:
        await client.aclose()
