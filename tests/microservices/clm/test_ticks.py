"""clm's tick handler on a real Redis stream: each tick observed once, without processed marks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from redis.asyncio import Redis

from backend.infra.eventbus import (
    Event,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
)
from backend.infra.observability import get_logger, get_tracer
from backend.trading.events import MarketTick
from microservices.clm.manager import LearningManager
from microservices.clm.settings import ClmSettings
from tests.support.polling import eventually


def _tick(event_id: str, mid: int, ts_ms: int) -> Event[MarketTick]:
    return Event(
        id=event_id,
        type="market.tick",
        source="test-feed",
        time=datetime.now(UTC),
        data=MarketTick(
            symbol="CLMUSDT",
            bid=Decimal(mid) - Decimal("0.5"),
            ask=Decimal(mid) + Decimal("0.5"),
            last=Decimal(mid),
            volume=Decimal(1),
            ts_ms=ts_ms,
        ),
    )


async def test_a_tick_delivered_twice_is_observed_once(
    client: Redis, settings: EventBusSettings
) -> None:
    """clm subscribes ticks without processed marks (`deduplicate=False`): a tick whose id is
    marked still reaches it, and a copy of a tick (the same event id under a new entry, as a
    feed's retried publication leaves), before or after a newer tick, enters the price
    window once."""
    manager = LearningManager(ClmSettings(), None, get_logger("test"), get_tracer("test"))  # type: ignore[arg-type]
    idempotency = Idempotency(client, "clm", settings)
    consumer = EventConsumer(client, "clm", settings, idempotency=idempotency)
    consumer.subscribe(MarketTick, manager.on_tick, deduplicate=False)
    first, second, third = _tick("t1", 100, 1_000), _tick("t2", 101, 2_000), _tick("t3", 102, 2_000)
    await idempotency.mark_many(["t1"])
    await EventPublisher(client, "test-feed", settings).publish_many(
        [first, first, second, first, second, third]
    )
    async with consumer:
        await eventually(
            lambda: (state := manager.symbols.get("CLMUSDT")) and state.last == 102.0,
            what="the last tick",
        )
    assert list(manager.symbols["CLMUSDT"].prices) == [100.0, 101.0, 102.0]
