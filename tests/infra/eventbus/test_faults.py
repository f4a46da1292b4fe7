"""Faults injected for real: separate processes, SIGKILL, a Redis server killed and restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from backend.infra.eventbus import (
    EmbeddedRedis,
    Event,
    EventBusSettings,
    EventBusUnavailable,
    EventConsumer,
    EventPublisher,
    Idempotency,
    create_redis_client,
)
from backend.trading.events import OrderFilled
from tests.support.otlp import OtlpReceiver

from .support import eventually
from .worker import fill

ROOT = Path(__file__).resolve().parents[3]


def _spawn(mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.infra.eventbus.worker", mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_one_trace_from_producer_process_to_consumer_process(redis_url: str, prefix: str) -> None:
    with OtlpReceiver() as receiver:
        env = {
            "REDIS_URL": redis_url,
            "EVENTBUS_PREFIX": prefix,
            "WORKER_COUNT": "2",
            "OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        consumer = _spawn("consume-traced", env)
        try:
            assert consumer.stdout is not None
            assert consumer.stdout.readline().strip() == "ready", consumer.stderr
            producer = _spawn("produce", env)
            out, err = producer.communicate(timeout=30)
            assert producer.returncode == 0, err
            published = json.loads(out)
            c_out, c_err = consumer.communicate(timeout=30)
            assert consumer.returncode == 0, c_err
            assert json.loads(c_out.splitlines()[-1]) == published
        finally:
            consumer.kill()

        def complete(spans: list[Any]) -> bool:
            names = [s.name for s in spans]
            return names.count("book fill") == 2 and names.count("send order.filled") == 2

        spans = receiver.wait_for(complete)
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    [root] = by_name["place order"]
    sends = by_name["send order.filled"]
    processes = by_name["process order.filled"]
    books = by_name["book fill"]
    assert {s.resource["service.name"] for s in sends} == {"worker-produce"}
    assert {s.resource["service.name"] for s in processes} == {"worker-consume-traced"}
    assert all(s.kind == 4 for s in sends) and all(s.kind == 5 for s in processes)
    # One trace: place order -> send (producer process) -> process -> book fill (consumer).
    assert {s.trace_id for s in sends + processes + books} == {root.trace_id}
    assert {s.parent_span_id for s in sends} == {root.span_id}
    assert {p.parent_span_id for p in processes} == {s.span_id for s in sends}
    assert {b.parent_span_id for b in books} == {p.span_id for p in processes}
    for span in processes:
        assert span.attributes["messaging.destination.name"] == f"{prefix}:events:order.filled"
        assert span.attributes["messaging.consumer.group.name"] == "portfolio"


async def test_killed_consumer_entry_is_reclaimed_and_takes_effect_exactly_once(
    redis_url: str, prefix: str, client: Redis, settings: EventBusSettings
) -> None:
    publisher = EventPublisher(client, "execution", settings)
    receipts = await publisher.publish_many([fill(n) for n in range(5)])
    doomed = _spawn(
        "hang", {"REDIS_URL": redis_url, "EVENTBUS_PREFIX": prefix, "WORKER_HANG_AT": "F2"}
    )
    try:
        signal_key = f"{prefix}:test:in-handler"
        await eventually(lambda: _exists(client, signal_key), 20, "the worker mid-handler")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
    finally:
        doomed.kill()
    key = settings.stream_key("order.filled")
    pending = await client.xpending_range(key, "portfolio", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"doomed"} and len(pending) == 5

    idempotency = Idempotency(client, "portfolio", settings)
    survivor = EventConsumer(
        client, "portfolio", settings, consumer_name="survivor", idempotency=idempotency
    )
    counts_key = f"{prefix}:test:applied"
    handled: dict[str, int] = {}

    async def on_fill(event: Event[OrderFilled]) -> None:
        handled[event.data.fill_id] = event.deliveries

        def effect(pipe: Any) -> None:
            pipe.hincrby(counts_key, event.data.fill_id, 1)

        await idempotency.apply_once(event.id, effect)

    survivor.subscribe(OrderFilled, on_fill)
    async with survivor:
        await eventually(lambda: _no_pending(client, key), 15, "the reclaimed entries")
    applied = {k.decode(): int(v) for k, v in (await client.hgetall(counts_key)).items()}
    assert applied == {f"F{n}": 1 for n in range(5)}
    # F0-F2 were applied by the dead consumer, so the survivor skips them as already
    # processed; F3 and F4 it handles on their second delivery.
    assert handled == {"F3": 2, "F4": 2}
    assert await idempotency.seen(receipts[2].event_id)


async def _exists(client: Redis, key: str) -> bool:
    return bool(await client.exists(key))


async def _no_pending(client: Redis, key: str) -> bool:
    return int((await client.xpending(key, "portfolio"))["pending"]) == 0


async def test_redis_killed_and_restarted_mid_publish_loop_loses_and_duplicates_nothing(
    tmp_path: Path, prefix: str
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")  # our own server: the shared one stays up
    server.start()
    settings = EventBusSettings(
        prefix=prefix,
        block_ms=100,
        retry_backoff_max_ms=100,
        claim_idle_ms=1_000,
        claim_interval_ms=200,
        reconnect_timeout_s=20.0,
        metrics_interval_s=0.2,
    )
    pub_client = create_redis_client(server.url)
    con_client = create_redis_client(server.url)
    try:
        publisher = EventPublisher(pub_client, "execution", settings)
        idempotency = Idempotency(con_client, "portfolio", settings)
        consumer = EventConsumer(
            con_client, "portfolio", settings, consumer_name="c", idempotency=idempotency
        )
        counts_key = f"{prefix}:test:applied"

        async def on_fill(event: Event[OrderFilled]) -> None:
            def effect(pipe: Any) -> None:
                pipe.hincrby(counts_key, event.id, 1)

            await idempotency.apply_once(event.id, effect)

        consumer.subscribe(OrderFilled, on_fill)
        returned: list[str] = []
        await consumer.start()

        async def publish_loop() -> None:
            for n in range(300):
                try:
                    receipt = await publisher.publish(fill(n))
                except EventBusUnavailable:
                    continue
                returned.append(receipt.event_id)
                await asyncio.sleep(0.002)

        loop = asyncio.create_task(publish_loop(), name="test-publish-loop")
        await eventually(lambda: len(returned) >= 100, 20, "100 publishes")
        server.kill()  # a crash, not a clean shutdown: only the fsynced AOF survives
        await asyncio.sleep(0.3)  # Redis stays down for a while; both sides must wait
        server.start()
        await asyncio.wait_for(loop, 60)
        assert len(returned) == 300  # every publish waited out the outage and returned

        async def all_applied() -> bool:
            return int(await con_client.hlen(counts_key)) >= len(returned)

        await eventually(all_applied, 30, "every returned event consumed")
        await consumer.stop()
        applied = {k.decode(): int(v) for k, v in (await con_client.hgetall(counts_key)).items()}
        assert set(applied) == set(returned)
        assert set(applied.values()) == {1}
    finally:
        await pub_client.aclose()
        await con_client.aclose()
        server.stop()
