"""Publisher and consumer against a real Redis: delivery, retries, dead letters, tracing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from backend.infra.eventbus import (
    MESSAGING_SYSTEM,
    EmbeddedRedis,
    Event,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
    create_redis_client,
    redis_readiness_check,
)
from backend.infra.observability import SpanKind, get_tracer
from backend.infra.observability._health import run_check
from backend.infra.observability._logging import SINK
from backend.trading.events import MarketTick, OrderFilled
from tests.support.factories import market_tick
from tests.support.procs import free_port

from .support import eventually, metric
from .worker import fill


async def test_published_event_is_consumed_once_and_acknowledged(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings, consumer_name="c1")
    got: list[Event[OrderFilled]] = []

    async def on_fill(event: Event[OrderFilled]) -> None:
        got.append(event)

    consumer.subscribe(OrderFilled, on_fill)
    receipt = await publisher.publish(fill(1))
    async with consumer:
        await eventually(lambda: len(got) == 1, what="the fill")
        key = settings.stream_key("order.filled")
        await eventually(lambda: _pending_count(client, key, "portfolio", 0), what="the ack")
    event = got[0]
    assert event.id == receipt.event_id and event.entry_id == receipt.entry_id
    assert event.data == fill(1) and event.deliveries == 1 and event.source == "execution"
    assert receipt.stream == "order.filled"


async def _pending_count(client: Redis, key: str, group: str, expected: int) -> bool:
    info = await client.xpending(key, group)
    return int(info["pending"]) == expected


async def test_consumer_reads_several_streams_in_one_group(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "md", settings)
    consumer = EventConsumer(client, "strategy", settings)
    got: list[str] = []

    async def record(event: Event[Any]) -> None:
        got.append(event.type)

    consumer.subscribe(OrderFilled, record)
    consumer.subscribe(MarketTick, record)
    tick = MarketTick(symbol="ETH-USD", bid=1, ask=2, last=1.5, volume=3, ts_ms=1)
    await publisher.publish_many([tick, fill(1), tick])
    async with consumer:
        await eventually(lambda: len(got) == 3, what="three events")
    assert sorted(got) == ["market.tick", "market.tick", "order.filled"]


async def test_spans_carry_messaging_attributes_and_the_consumer_continues_the_trace(
    client: Redis, settings: EventBusSettings, span_exporter: Any
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings)
    done = asyncio.Event()

    async def on_fill(event: Event[OrderFilled]) -> None:
        with get_tracer("test").start_as_current_span("book fill"):
            done.set()

    consumer.subscribe(OrderFilled, on_fill)
    with get_tracer("test").start_as_current_span("place order"):
        receipt = await publisher.publish(fill(1))
    async with consumer:
        await asyncio.wait_for(done.wait(), 10)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    send, process, book = (
        spans["send order.filled"],
        spans["process order.filled"],
        spans["book fill"],
    )
    key = settings.stream_key("order.filled")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert send.attributes["messaging.system"] == MESSAGING_SYSTEM
    assert send.attributes["messaging.destination.name"] == key
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.message.id"] == receipt.entry_id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.consumer.group.name"] == "portfolio"
    assert process.attributes["messaging.message.id"] == receipt.entry_id
    trace_id = spans["place order"].context.trace_id
    assert {send.context.trace_id, process.context.trace_id, book.context.trace_id} == {trace_id}
    assert process.parent.span_id == send.context.span_id
    assert book.parent.span_id == process.context.span_id
    # The names are `{messaging.operation.name} {stream}`; operation names are required.
    assert send.attributes["messaging.operation.name"] == "send"
    assert process.attributes["messaging.operation.name"] == "process"
    # The process span links to the message's creation context, as the conventions ask.
    (link,) = process.links
    assert link.context.span_id == send.context.span_id
    assert link.context.trace_id == send.context.trace_id
    for span in (send, process):
        assert span.attributes["messaging.destination.name"] == key
        assert span.attributes["messaging.message.id"] == receipt.entry_id


async def test_failing_handler_is_retried_with_backoff_then_succeeds(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings)
    attempts: list[int] = []

    async def flaky(event: Event[OrderFilled]) -> None:
        attempts.append(event.deliveries)
        if len(attempts) < 3:
            raise RuntimeError("database is restarting")

    consumer.subscribe(OrderFilled, flaky)
    await publisher.publish(fill(1))
    async with consumer:
        await eventually(lambda: len(attempts) == 3, what="three attempts")
        await eventually(
            lambda: _pending_count(client, settings.stream_key("order.filled"), "portfolio", 0)
        )
    assert attempts == [1, 2, 3]
    assert await client.xlen(settings.dead_letter_key("order.filled")) == 0


async def test_poison_message_lands_in_the_dead_letter_stream_with_error_and_fields(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings)
    calls: list[int] = []
    good: list[str] = []

    async def handler(event: Event[OrderFilled]) -> None:
        if event.data.fill_id == "F0":
            calls.append(event.deliveries)
            raise ValueError("cannot book a fill for an unknown account")
        good.append(event.data.fill_id)

    consumer.subscribe(OrderFilled, handler)
    poison = await publisher.publish(fill(0))
    await publisher.publish(fill(1))
    dlq = settings.dead_letter_key("order.filled")
    before = metric(
        "eventbus_dead_lettered_total",
        stream="order.filled",
        group="portfolio",
        reason="handler_error",
    )
    async with consumer:
        await eventually(lambda: _xlen_is(client, dlq, 1), what="the dead letter")
        await eventually(
            lambda: _pending_count(client, settings.stream_key("order.filled"), "portfolio", 0)
        )
    assert calls == list(range(1, settings.max_deliveries + 1))
    assert good == ["F1"]
    [(_, record)] = await client.xrange(dlq)
    assert record[b"reason"] == b"handler_error"
    assert b"ValueError: cannot book a fill for an unknown account" in record[b"error"]
    assert record[b"entry_id"].decode() == poison.entry_id
    assert record[b"event_id"].decode() == poison.event_id
    assert record[b"deliveries"] == str(settings.max_deliveries).encode()
    assert orjson.loads(record[b"original.event"])["data"]["fill_id"] == "F0"
    after = metric(
        "eventbus_dead_lettered_total",
        stream="order.filled",
        group="portfolio",
        reason="handler_error",
    )
    assert after - before == 1


async def test_a_batch_read_is_one_receive_span_linking_every_message_it_returned(
    client: Redis, settings: EventBusSettings, span_exporter: Any
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings, consumer_name="c1")
    got: list[str] = []

    async def on_fill(event: Event[OrderFilled]) -> None:
        got.append(event.id)

    consumer.subscribe(OrderFilled, on_fill)
    sends = []
    for n in range(3):  # three producer traces, read by one XREADGROUP
        with get_tracer("test").start_as_current_span(f"place order {n}"):
            sends.append(await publisher.publish(fill(n + 1)))
    async with consumer:
        await eventually(lambda: len(got) == 3, what="three fills")
    key = settings.stream_key("order.filled")
    send_spans = span_exporter.named("send order.filled")
    (receive,) = span_exporter.named(f"receive {key}")
    assert receive.kind == SpanKind.CLIENT
    assert receive.parent is None
    assert receive.attributes["messaging.operation.type"] == "receive"
    assert receive.attributes["messaging.operation.name"] == "receive"
    assert receive.attributes["messaging.destination.name"] == key
    assert receive.attributes["messaging.consumer.group.name"] == "portfolio"
    assert receive.attributes["messaging.batch.message_count"] == 3
    assert receive.attributes["messaging.system"] == MESSAGING_SYSTEM
    assert [(link.context.trace_id, link.context.span_id) for link in receive.links] == [
        (s.context.trace_id, s.context.span_id) for s in send_spans
    ]
    assert [link.attributes["messaging.message.id"] for link in receive.links] == [
        r.entry_id for r in sends
    ]
    # Each process span keeps its producer as parent (and link): three traces, not one.
    processes = span_exporter.named("process order.filled")
    assert sorted(p.parent.span_id for p in processes) == sorted(
        s.context.span_id for s in send_spans
    )
    assert receive.context.trace_id not in {p.context.trace_id for p in processes}
    assert receive.start_time <= receive.end_time <= min(p.start_time for p in processes)


async def test_the_dead_letter_line_carries_the_trace_of_the_failed_delivery(
    client: Redis, settings: EventBusSettings, span_exporter: Any, log_lines: Any
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings)

    async def handler(event: Event[OrderFilled]) -> None:
        raise ValueError("cannot book")

    consumer.subscribe(OrderFilled, handler)
    await publisher.publish(fill(0))
    dlq = settings.dead_letter_key("order.filled")
    async with consumer:
        await eventually(lambda: _xlen_is(client, dlq, 1), what="the dead letter")
    last = span_exporter.named("process order.filled")[-1]
    SINK.flush()
    lines = [orjson.loads(x) for x in log_lines.getvalue().splitlines()]
    (line,) = [x for x in lines if x["message"] == "entry dead-lettered"]
    assert line["trace_id"] == f"{last.context.trace_id:032x}"
    assert line["span_id"] == f"{last.context.span_id:016x}"


async def _xlen_is(client: Redis, key: str, n: int) -> bool:
    return int(await client.xlen(key)) == n


MALFORMED_ENTRIES: list[tuple[str, dict[bytes, bytes]]] = [
    ("missing_field", {b"evt": b"{}"}),
    ("bad_json", {b"event": b'{"id": '}),
    ("missing_field", {b"event": b'{"id": "x"}'}),
    (
        "unknown_type",
        {
            b"event": orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "u1",
                    "type": "order.teleported",
                    "source": "s",
                    "time": "2025-01-01T00:00:00Z",
                    "data": {},
                }
            )
        },
    ),
    (
        "bad_traceparent",
        {
            b"event": orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "t1",
                    "type": "order.filled",
                    "source": "s",
                    "time": "2025-01-01T00:00:00Z",
                    "traceparent": "00-zz-zz-01",
                    "data": orjson.loads(fill(1).model_dump_json()),
                }
            )
        },
    ),
    (
        "invalid_data",
        {
            b"event": orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "d1",
                    "type": "order.filled",
                    "source": "s",
                    "time": "2025-01-01T00:00:00Z",
                    "data": {"fill_id": 3},
                }
            )
        },
    ),
]


async def test_malformed_entries_are_dead_lettered_with_reasons_and_consumption_goes_on(
    client: Redis, settings: EventBusSettings
) -> None:
    key = settings.stream_key("order.filled")
    for _reason, fields in MALFORMED_ENTRIES:
        await client.xadd(key, fields)  # type: ignore[arg-type]
    publisher = EventPublisher(client, "execution", settings)
    await publisher.publish(fill(7))
    consumer = EventConsumer(client, "portfolio", settings)
    good: list[str] = []

    async def handler(event: Event[OrderFilled]) -> None:
        good.append(event.data.fill_id)

    consumer.subscribe(OrderFilled, handler)
    dlq = settings.dead_letter_key("order.filled")
    async with consumer:
        await eventually(lambda: good == ["F7"], what="the valid event")
        await eventually(lambda: _xlen_is(client, dlq, len(MALFORMED_ENTRIES)))
        await eventually(lambda: _pending_count(client, key, "portfolio", 0))
    records = [r for _, r in await client.xrange(dlq)]
    assert [r[b"reason"].decode() for r in records] == [m[0] for m in MALFORMED_ENTRIES]
    for record, (_reason, fields) in zip(records, MALFORMED_ENTRIES, strict=True):
        assert record[b"error"]  # the detail says what exactly was wrong
        assert {k: v for k, v in record.items() if k.startswith(b"original.")} == {
            b"original." + k: v for k, v in fields.items()
        }


async def test_redelivered_event_takes_effect_once_with_idempotency(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    idempotency = Idempotency(client, "portfolio", settings)
    consumer = EventConsumer(client, "portfolio", settings, idempotency=idempotency)
    booked: list[str] = []

    async def handler(event: Event[OrderFilled]) -> None:
        booked.append(event.id)

    consumer.subscribe(OrderFilled, handler)
    copy = Event(
        id="fill-evt-1",
        type="order.filled",
        source="execution",
        time=datetime.now(UTC),
        data=fill(1),
    )
    # The same event stored three times: in one batch, and again after it was processed.
    await publisher.publish_many([copy, copy])
    async with consumer:
        await eventually(lambda: booked == ["fill-evt-1"])
        await publisher.publish_many([copy, fill(2)])
        await eventually(lambda: len(booked) == 2)
        await eventually(
            lambda: _pending_count(client, settings.stream_key("order.filled"), "portfolio", 0)
        )
    assert booked[0] == "fill-evt-1" and booked[1] != "fill-evt-1"
    assert await idempotency.seen("fill-evt-1")


async def test_marks_live_as_long_as_their_event_type_declares(
    client: Redis, settings: EventBusSettings
) -> None:
    """Ticks (MarketTick.dedup_ttl_s) are remembered for minutes, fills for the bus's default:
    the marks of a 20 Hz feed stay bounded while a fill replayed days later is still skipped."""
    publisher = EventPublisher(client, "bridge", settings)
    idempotency = Idempotency(client, "monitor", settings)
    consumer = EventConsumer(client, "monitor", settings, idempotency=idempotency)
    handled: list[str] = []

    async def handler(event: Event[Any]) -> None:
        handled.append(event.type)

    consumer.subscribe(MarketTick, handler)
    consumer.subscribe(OrderFilled, handler)
    tick = Event(
        id="tick-evt-1",
        type="market.tick",
        source="bridge",
        time=datetime.now(UTC),
        data=MarketTick(symbol="BTCUSDT", bid="100", ask="101", last="100.5", volume="1", ts_ms=1),
    )
    receipt = await publisher.publish(fill(1))
    await publisher.publish_many([tick, tick])
    async with consumer:
        await eventually(lambda: sorted(handled) == ["market.tick", "order.filled"])
        await publisher.publish_many([tick])  # the publisher's retry after a lost reply
        await eventually(
            lambda: _pending_count(client, settings.stream_key("market.tick"), "monitor", 0)
        )
    assert sorted(handled) == ["market.tick", "order.filled"]
    assert MarketTick.dedup_ttl_s is not None
    tick_ttl = await client.ttl(idempotency.key("tick-evt-1"))
    fill_ttl = await client.ttl(idempotency.key(receipt.event_id))
    assert 0 < tick_ttl <= MarketTick.dedup_ttl_s
    assert settings.dedup_ttl_s - 60 < fill_ttl <= settings.dedup_ttl_s


async def test_a_subscription_that_does_not_deduplicate_neither_reads_nor_writes_marks(
    client: Redis, settings: EventBusSettings
) -> None:
    """A tick handler that keeps the newest quote needs no processed marks: its tick reaches
    the handler although its id is marked (no look-up between the read and the handler) and
    leaves no mark behind; the fills of the same consumer are still deduplicated."""
    publisher = EventPublisher(client, "bridge", settings)
    idempotency = Idempotency(client, "quotes", settings)
    consumer = EventConsumer(client, "quotes", settings, idempotency=idempotency)
    handled: list[str] = []

    async def handler(event: Event[Any]) -> None:
        handled.append(event.id)

    consumer.subscribe(MarketTick, handler, deduplicate=False)
    consumer.subscribe(OrderFilled, handler)
    marked_tick = Event(
        id="tick-marked",
        type="market.tick",
        source="bridge",
        time=datetime.now(UTC),
        data=MarketTick(symbol="BTCUSDT", bid="100", ask="101", last="100.5", volume="1", ts_ms=1),
    )
    await idempotency.mark_many(["tick-marked", "fill-marked"])
    marked_fill = Event(
        id="fill-marked",
        type="order.filled",
        source="execution",
        time=datetime.now(UTC),
        data=fill(1),
    )
    fresh = await publisher.publish(marked_tick.data)
    await publisher.publish_many([marked_tick, marked_fill])
    async with consumer:
        await eventually(lambda: sorted(handled) == sorted([fresh.event_id, "tick-marked"]))
        for stream in ("market.tick", "order.filled"):
            await eventually(
                lambda stream=stream: _pending_count(
                    client, settings.stream_key(stream), "quotes", 0
                )
            )
    assert not await idempotency.seen(fresh.event_id)
    assert handled.count("tick-marked") == 1 and "fill-marked" not in handled


async def test_acknowledgements_alone_go_with_the_next_read_and_marks_keep_their_transaction(
    tmp_path: Any, settings: EventBusSettings
) -> None:
    """A read that leaves nothing but acknowledgements (ticks read without marks) costs no
    MULTI/EXEC: its XACK goes out with the next XREADGROUP, and nothing stays pending; a
    deduplicated event still commits its processed mark and acknowledgement in one
    transaction, and a stop leaves nothing handled unacknowledged."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = create_redis_client(server.url)
        try:
            publisher = EventPublisher(client, "bridge", settings)
            idempotency = Idempotency(client, "quotes", settings)
            consumer = EventConsumer(client, "quotes", settings, idempotency=idempotency)
            handled: list[str] = []

            async def handler(event: Event[Any]) -> None:
                handled.append(event.id)

            consumer.subscribe(MarketTick, handler, deduplicate=False)
            consumer.subscribe(OrderFilled, handler)
            tick = market_tick("100", "101", ts_ms=1)
            ticks, fills = settings.stream_key("market.tick"), settings.stream_key("order.filled")

            async def calls(command: str) -> int:
                stats = await client.info("commandstats")
                return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

            async with consumer:
                for n in range(1, 4):  # one read each
                    await publisher.publish(tick)
                    await eventually(lambda n=n: len(handled) == n)
                await eventually(lambda: _pending_count(client, ticks, "quotes", 0))
                assert await calls("exec") == 0
                assert await calls("xack") >= 3
                receipt = await publisher.publish(fill(1))
                await eventually(lambda: _pending_count(client, fills, "quotes", 0))
                assert await calls("exec") == 1
                assert await idempotency.seen(receipt.event_id)
                await publisher.publish(tick)
                await eventually(lambda: len(handled) == 5)
            assert await _pending_count(client, ticks, "quotes", 0)
        finally:
            await client.aclose()


async def test_a_stop_sends_the_acknowledgements_the_last_read_left(
    client: Redis, settings: EventBusSettings
) -> None:
    """Stopped while a handler runs, the consumer reads no more: the acknowledgement that
    would have gone with the next read is sent on its own, and nothing handled stays
    pending."""
    publisher = EventPublisher(client, "bridge", settings)
    consumer = EventConsumer(client, "quotes", settings)
    stopping: list[asyncio.Task[None]] = []

    async def handler(event: Event[Any]) -> None:
        stopping.append(asyncio.create_task(consumer.stop()))
        await asyncio.sleep(0)  # the stop begins while this handler runs

    consumer.subscribe(MarketTick, handler, deduplicate=False)
    await consumer.start()
    await publisher.publish(market_tick("100", "101", ts_ms=1))
    await eventually(lambda: stopping)
    await stopping[0]
    assert await _pending_count(client, settings.stream_key("market.tick"), "quotes", 0)


async def test_apply_once_applies_a_redis_effect_exactly_once(
    client: Redis, settings: EventBusSettings
) -> None:
    idempotency = Idempotency(client, "portfolio", settings)
    key = f"{settings.prefix}:position"

    def effect(pipe: Any) -> None:
        pipe.hincrbyfloat(key, "BTC-USD", 0.5)

    results = await asyncio.gather(*(idempotency.apply_once("e1", effect) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert float(await client.hget(key, "BTC-USD")) == 0.5
    assert await idempotency.claim("e2") and not await idempotency.claim("e2")


async def _nothing() -> None:
    return None


async def test_graceful_stop_lets_the_in_flight_handler_finish_and_acks_it(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "portfolio", settings)
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(event: Event[OrderFilled]) -> None:
        entered.set()
        await release.wait()
        finished.append(event.data.fill_id)

    consumer.subscribe(OrderFilled, slow)
    await publisher.publish_many([fill(1), fill(2)])
    await consumer.start()
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.create_task(consumer.stop(), name="test-stop")
    # The sentinel: a task scheduled after stop()'s. The loop runs ready tasks in the order
    # they were scheduled, so once it has run, stop() has taken its first step, in which it
    # decides what to cancel, and has reached its wait.
    await asyncio.create_task(_nothing(), name="test-sentinel")
    assert not stopping.done(), "stop() waits for the in-flight handler"
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == ["F1"]  # the in-flight one finished; the next was not started
    key = settings.stream_key("order.filled")
    # F1 acknowledged; F2 stays pending for redelivery.
    assert await _pending_count(client, key, "portfolio", 1)
    assert not consumer.running


async def test_metrics_count_per_stream_and_gauges_show_pending_and_lag(
    client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    consumer = EventConsumer(client, "risk", settings)
    gate = asyncio.Event()

    async def handler(event: Event[OrderFilled]) -> None:
        await gate.wait()

    consumer.subscribe(OrderFilled, handler)
    labels = {"stream": "order.filled", "group": "risk"}
    published = metric("eventbus_published_total", stream="order.filled")
    consumed = metric("eventbus_consumed_total", **labels)
    count = metric("eventbus_handler_duration_seconds_count", **labels)
    waited = metric("eventbus_time_in_stream_seconds_count", **labels)
    await publisher.publish_many([fill(n) for n in range(3)])
    assert metric("eventbus_published_total", stream="order.filled") - published == 3
    async with consumer:
        await eventually(lambda: metric("eventbus_pending_entries", **labels) == 3)
        gate.set()
        await eventually(lambda: metric("eventbus_consumed_total", **labels) - consumed == 3)
        await eventually(lambda: metric("eventbus_pending_entries", **labels) == 0)
    assert metric("eventbus_consumer_lag_entries", **labels) == 0
    assert metric("eventbus_handler_duration_seconds_count", **labels) - count == 3
    assert metric("eventbus_time_in_stream_seconds_count", **labels) - waited == 3


async def test_readiness_check_reports_redis_up_and_down(client: Redis) -> None:
    ok = await run_check(redis_readiness_check(client))
    assert ok.ok and ok.name == "redis"
    dead = create_redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        down = await run_check(redis_readiness_check(dead, timeout_s=3))
    finally:
        await dead.aclose()
    assert not down.ok and "EventBusUnavailable" in (down.error or "")


async def test_publish_of_a_model_outside_the_catalogue_is_refused(
    client: Redis, settings: EventBusSettings
) -> None:
    from backend.infra.eventbus import EventData, UnknownEventType

    class Gossip(EventData):
        text: str

    with pytest.raises(UnknownEventType):
        await EventPublisher(client, "x", settings).publish(Gossip(text="hi"))
