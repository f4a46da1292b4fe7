"""A producer or consumer run as its own process by the tests (`python -m ...worker MODE`).

Configuration comes from the environment: REDIS_URL, EVENTBUS_PREFIX, WORKER_COUNT and, for
tracing, OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_PROTOCOL read by `init_observability`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from backend.infra.eventbus import (
    Event,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
    create_redis_client,
)
from backend.infra.observability import (
    get_tracer,
    init_observability,
    shutdown_observability,
)
from backend.trading.events import OrderFilled
from tests.support.factories import fill_event


def fill(n: int) -> OrderFilled:
    """The n-th of a run of fills, alike but for their ids and times."""
    return fill_event(
        f"F{n}",
        "BUY",
        "0.5",
        "64000.10",
        "3.20",
        "BTC-USD",
        client_order_id=f"C{n}",
        ts_ms=1_700_000_000_000 + n,
    )


def _settings() -> EventBusSettings:
    return EventBusSettings.from_env(
        block_ms=100, claim_idle_ms=1_000, claim_interval_ms=200, retry_backoff_max_ms=100
    )


async def produce() -> None:
    """Publish WORKER_COUNT fills inside one parent span; print the receipts as JSON."""
    client = create_redis_client(os.environ["REDIS_URL"])
    publisher = EventPublisher(client, source="execution", settings=_settings())
    count = int(os.environ.get("WORKER_COUNT", "1"))
    with get_tracer("tests.worker").start_as_current_span("place order"):
        receipts = await publisher.publish_many([fill(n) for n in range(count)])
    print(json.dumps([r.event_id for r in receipts]), flush=True)
    await client.aclose()


async def consume_traced() -> None:
    """Handle WORKER_COUNT fills, each with a child span, then stop."""
    client = create_redis_client(os.environ["REDIS_URL"])
    consumer = EventConsumer(client, "portfolio", _settings(), consumer_name="traced")
    count = int(os.environ.get("WORKER_COUNT", "1"))
    done = asyncio.Event()
    seen: list[str] = []

    async def on_fill(event: Event[OrderFilled]) -> None:
        with get_tracer("tests.worker").start_as_current_span("book fill"):
            seen.append(event.id)
        if len(seen) >= count:
            done.set()

    consumer.subscribe(OrderFilled, on_fill)
    async with consumer:
        print("ready", flush=True)
        await asyncio.wait_for(done.wait(), 30)
    print(json.dumps(seen), flush=True)
    await client.aclose()


async def consume_then_hang() -> None:
    """Apply each fill once (HINCRBY, idempotent); after applying WORKER_HANG_AT, hang."""
    client = create_redis_client(os.environ["REDIS_URL"])
    settings = _settings()
    idempotency = Idempotency(client, "portfolio", settings)
    consumer = EventConsumer(
        client, "portfolio", settings, consumer_name="doomed", idempotency=idempotency
    )
    hang_at = os.environ["WORKER_HANG_AT"]
    counts_key = f"{settings.prefix}:test:applied"
    signal_key = f"{settings.prefix}:test:in-handler"

    async def on_fill(event: Event[OrderFilled]) -> None:
        def effect(pipe: Any) -> None:
            pipe.hincrby(counts_key, event.data.fill_id, 1)

        await idempotency.apply_once(event.id, effect)
        if event.data.fill_id == hang_at:
            await client.set(signal_key, event.id)
            await asyncio.Event().wait()  # stuck mid-handler until the test kills us

    consumer.subscribe(OrderFilled, on_fill)
    async with consumer:
        await asyncio.Event().wait()


def main() -> None:
    mode = sys.argv[1]
    traced = bool(os.environ.get("OTLP_ENDPOINT"))
    init_observability(f"worker-{mode}", "WARNING", enable_tracing=traced)
    runner = {"produce": produce, "consume-traced": consume_traced, "hang": consume_then_hang}
    try:
        asyncio.run(runner[mode]())
    finally:
        shutdown_observability()


if __name__ == "__main__":
    main()
