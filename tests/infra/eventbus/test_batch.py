"""Batch subscriptions against a real Redis: one handler call per read, per-entry guarantees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from backend.infra.eventbus import (
    BatchEntry,
    Event,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
)
from backend.infra.observability import SpanKind, get_tracer
from backend.trading.events import MarketTick, OrderFilled, SignalGenerated
from tests.support.factories import market_tick

from .support import eventually
from .worker import fill


async def _pending(client: Redis, settings: EventBusSettings) -> int:
    info = await client.xpending(settings.stream_key("order.filled"), "portfolio")
    return int(info["pending"])


async def test_a_batch_handler_gets_every_entry_of_a_read_in_one_call_and_all_are_acked(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings, consumer_name="c1")
    calls: list[list[str]] = []

    async def on_fills(entries: Sequence[BatchEntry[OrderFilled]]) -> None:
        calls.append([entry.data.fill_id for entry in entries])

    consumer.subscribe_batch(OrderFilled, on_fills)
    await publisher.publish_many([fill(n) for n in range(5)])
    async with consumer:
        await eventually(lambda: sum(map(len, calls)) == 5, what="five fills")
        await eventually(lambda: _pending_is(client, settings, 0), what="the acks")
    assert calls == [["F0", "F1", "F2", "F3", "F4"]]


async def _pending_is(client: Redis, settings: EventBusSettings, n: int) -> bool:
    return await _pending(client, settings) == n


async def test_a_failed_batch_is_handled_entry_by_entry_and_only_the_poison_dead_letters(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings, consumer_name="c1")
    calls: list[list[str]] = []
    booked: list[str] = []

    async def on_fills(entries: Sequence[BatchEntry[OrderFilled]]) -> None:
        ids = [entry.data.fill_id for entry in entries]
        calls.append(ids)
        if "F2" in ids:
            raise ValueError("cannot book F2")
        booked.extend(ids)

    consumer.subscribe_batch(OrderFilled, on_fills)
    await publisher.publish_many([fill(n) for n in range(4)])
    dlq = settings.dead_letter_key("order.filled")
    async with consumer:
        await eventually(lambda: _xlen_is(client, dlq, 1), what="the dead letter")
        await eventually(lambda: _pending_is(client, settings, 0), what="the acks")
    assert calls[0] == ["F0", "F1", "F2", "F3"]
    assert calls[1:5] == [["F0"], ["F1"], ["F2"], ["F3"]]
    assert calls[5:] == [["F2"]] * (settings.max_deliveries - 1)
    assert booked == ["F0", "F1", "F3"]
    [(_, record)] = await client.xrange(dlq)
    assert record[b"reason"] == b"handler_error"
    assert b"ValueError: cannot book F2" in record[b"error"]
    assert orjson.loads(record[b"original.event"])["data"]["fill_id"] == "F2"


async def _xlen_is(client: Redis, key: str, n: int) -> bool:
    return int(await client.xlen(key)) == n


async def test_a_batch_never_holds_an_event_already_processed_or_twice_the_same(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    idempotency = Idempotency(client, "portfolio", settings)
    consumer = EventConsumer(
        client, "portfolio", settings, consumer_name="c1", idempotency=idempotency
    )
    seen: list[str] = []

    async def on_fills(entries: Sequence[BatchEntry[OrderFilled]]) -> None:
        seen.extend(entry.event.id for entry in entries)

    consumer.subscribe_batch(OrderFilled, on_fills)
    copy = Event(
        id="fill-evt-1",
        type="order.filled",
        source="execution",
        time=datetime.now(UTC),
        data=fill(1),
    )
    await publisher.publish_many([copy, fill(2), copy])
    async with consumer:
        await eventually(lambda: len(seen) == 2, what="two events")
        await publisher.publish_many([copy, fill(3)])
        await eventually(lambda: len(seen) == 3, what="the third")
        await eventually(lambda: _pending_is(client, settings, 0), what="the acks")
    assert seen.count("fill-evt-1") == 1


async def test_each_entry_of_a_batch_continues_its_own_trace_and_the_batch_span_links_them(
    client: Redis, settings: EventBusSettings, span_exporter: Any
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings, consumer_name="c1")
    done = asyncio.Event()
    tracer = get_tracer("test")

    async def on_fills(entries: Sequence[BatchEntry[OrderFilled]]) -> None:
        with tracer.start_as_current_span("book batch"):
            for entry in entries:
                with entry.activate(), tracer.start_as_current_span(f"book {entry.data.fill_id}"):
                    pass
        done.set()

    consumer.subscribe_batch(OrderFilled, on_fills)
    # Published from three orders' traces, then read in one batch.
    orders = {}
    receipts = []
    for n in range(3):
        with tracer.start_as_current_span(f"order {n}") as span:
            orders[f"F{n}"] = span.get_span_context().trace_id
            receipts.append(await publisher.publish(fill(n)))
    async with consumer:
        await asyncio.wait_for(done.wait(), 10)
    spans = span_exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    process = [s for s in spans if s.name == "process order.filled"]
    batch_span = next(s for s in process if "messaging.batch.message_count" in s.attributes)
    per_entry = {s.attributes["cloudevents.event_id"]: s for s in process if s is not batch_span}
    assert batch_span.kind == SpanKind.CONSUMER
    assert batch_span.attributes["messaging.batch.message_count"] == 3
    assert {link.context.trace_id for link in batch_span.links} == set(orders.values())
    assert by_name["book batch"].parent.span_id == batch_span.context.span_id
    for receipt, (fill_id, trace_id) in zip(receipts, orders.items(), strict=True):
        own = per_entry[receipt.event_id]
        assert own.context.trace_id == trace_id
        book = by_name[f"book {fill_id}"]
        assert book.context.trace_id == trace_id
        assert book.parent.span_id == own.context.span_id


async def test_a_deferred_read_is_handled_after_its_delay_unless_a_subscription_wants_it_now(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "feed", settings)
    tick = market_tick("100", "100", ts_ms=1)
    signal = SignalGenerated(
        signal_id="s1",
        symbol="BTCUSDT",
        direction="BUY",
        confidence=0.9,
        probability_up=0.9,
        model_version="m1",
    )
    handled: dict[str, float] = {}

    async def on_tick(event: Event[MarketTick]) -> None:
        handled[event.data.symbol] = time.monotonic()

    async def on_signal(event: Event[SignalGenerated]) -> None:
        handled[event.data.signal_id] = time.monotonic()

    # Only deferred subscriptions: a read is handled no sooner than the delay after it arrived.
    deferred = EventConsumer(client, "marks", settings, consumer_name="c1")
    deferred.subscribe(MarketTick, on_tick, deduplicate=False, defer_ms=300)
    async with deferred:
        await asyncio.sleep(0.2)  # blocked in its read
        sent = time.monotonic()
        await publisher.publish(tick)
        await eventually(lambda: "BTCUSDT" in handled, what="the deferred tick")
    assert handled["BTCUSDT"] - sent >= 0.29
    # With a subscription that does not defer, the consumer never waits.
    handled.clear()
    mixed = EventConsumer(client, "drift", settings, consumer_name="c1", start_from="latest")
    mixed.subscribe(MarketTick, on_tick, deduplicate=False, defer_ms=5_000)
    mixed.subscribe(SignalGenerated, on_signal)
    async with mixed:
        await asyncio.sleep(0.2)
        await publisher.publish_many([tick, signal])
        await eventually(lambda: len(handled) == 2, timeout_s=4.0, what="both, at once")
