"""Market data on its own Redis (`MARKET_REDIS_URL`): the ticks go there and are read from
there, in the service's consumer group on that server; everything else stays on the bus's
Redis; readiness names the market-data Redis when it is down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from backend.infra.eventbus import (
    EmbeddedRedis,
    Event,
    EventBusSettings,
    EventPublisher,
    create_redis_client,
)
from backend.infra.service import Service
from backend.trading.events import MarketTick, SignalGenerated
from tests.support.factories import market_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

NAME = "market-redis-test"


def signal(symbol: str) -> SignalGenerated:
    return SignalGenerated(
        signal_id=f"sig-{symbol}",
        symbol=symbol,
        direction="BUY",
        confidence=0.9,
        probability_up=0.9,
        model_version="m1",
    )


@pytest.fixture
def market(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "market", appendonly=False)
    monkeypatch.setenv("MARKET_REDIS_URL", server.start())
    try:
        yield server
    finally:
        server.stop()


async def publish(harness: ServiceHarness, market_url: str, *events: object) -> None:
    main, ticks = create_redis_client(harness.redis_url), create_redis_client(market_url)
    publisher = EventPublisher(
        main, "test", EventBusSettings(prefix=harness.prefix), market_client=ticks
    )
    try:
        await publisher.publish_many(events)  # type: ignore[arg-type]
    finally:
        await main.aclose()
        await ticks.aclose()


def test_ticks_travel_on_the_market_redis_and_the_rest_on_the_bus(
    harness: ServiceHarness, market: EmbeddedRedis
) -> None:
    seen: list[str] = []

    def build() -> Service:
        service = Service(NAME, eventbus=True)

        async def on_tick(event: Event[MarketTick]) -> None:
            seen.append(f"tick {event.data.symbol}")

        async def on_signal(event: Event[SignalGenerated]) -> None:
            seen.append(f"signal {event.data.symbol}")

        service.subscribe(MarketTick, on_tick, deduplicate=False)
        service.subscribe(SignalGenerated, on_signal)
        return service

    settings = EventBusSettings(prefix=harness.prefix)
    tick_key, signal_key = (
        settings.stream_key("market.tick"),
        settings.stream_key("signal.generated"),
    )
    main = redis.Redis.from_url(harness.redis_url)
    ticks = redis.Redis.from_url(market.url)
    try:
        with harness.run(build):
            # One call, both kinds: each event to its own server.
            asyncio.run(publish(harness, market.url, market_tick("100", "100"), signal("BTCUSDT")))
            wait_until(lambda: len(seen) == 2, what="both events handled")
            assert sorted(seen) == ["signal BTCUSDT", "tick BTCUSDT"]
            assert ticks.xlen(tick_key) == 1 and not main.exists(tick_key)
            assert main.xlen(signal_key) == 1 and not ticks.exists(signal_key)
            # The tick was read in the service's group on the market server, and acknowledged.
            (group,) = ticks.xinfo_groups(tick_key)
            assert group["name"] == NAME.encode() and group["pending"] == 0
            assert main.xinfo_groups(signal_key)[0]["name"] == NAME.encode()
    finally:
        main.close()
        ticks.close()


def test_readiness_names_the_market_redis_while_it_is_down(
    harness: ServiceHarness, market: EmbeddedRedis
) -> None:
    def build() -> Service:
        service = Service(NAME, eventbus=True)

        async def on_tick(event: Event[MarketTick]) -> None:
            pass

        service.subscribe(MarketTick, on_tick, deduplicate=False)
        return service

    with harness.run(build) as client:
        market.stop()
        wait_until(lambda: client.get("/health/ready").status_code == 503, what="a 503")
        body = client.get("/health/ready").json()
        assert "redis-market" in str(body), body
        market.start()  # same port
        wait_until(lambda: client.get("/health/ready").status_code == 200, what="ready again")
