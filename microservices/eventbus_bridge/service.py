"""eventbus-bridge assembly: the feed loop, the stall watch, their metrics and readiness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

from backend.infra.eventbus import EventPublisher, FeedStalled, MarketTick
from backend.infra.observability import ReadinessCheck
from backend.infra.service import Resources, Service

from .feed import StallWatch, Step, replay_quotes, replay_steps, simulated_steps
from .settings import BridgeSettings

NAME = "eventbus-bridge"
FEED = "market-data"

TICKS_PUBLISHED = Counter(
    "feed_ticks_published_total", "Market ticks published to the bus, by symbol.", ["symbol"]
)
FEED_LAG = Histogram(
    "feed_lag_seconds",
    "How late a tick was published against its schedule (wall clock).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FEED_STALLS = Counter("feed_stalls_total", "Feed stalls detected, by symbol.", ["symbol"])
FEED_STALLED = Gauge("feed_stalled", "1 while a symbol's feed is stalled.", ["symbol"])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MarketFeed:
    """Publishes the configured feed's ticks, paced in wall-clock time, and watches for stalls."""

    def __init__(self, settings: BridgeSettings, service: Service) -> None:
        self.settings = settings
        self.log = service.logger
        self.published = 0
        self.finished = False
        if settings.mode == "replay":
            quotes = replay_quotes(settings)
            self.symbols: tuple[str, ...] = tuple(sorted({str(q.symbol) for q in quotes}))
            self._steps: Iterator[Step] = replay_steps(
                quotes, settings.speedup, settings.replay_loop
            )
        else:
            self.symbols = settings.symbols
            self._steps = simulated_steps(settings, start_ms=_now_ms())
        self.watch = StallWatch(self.symbols, settings.stall_ms, started_ms=_now_ms())

    async def run(self, resources: Resources) -> None:
        """The feed loop: each step's ticks are published together, each with its own span."""
        publisher: EventPublisher = resources.publisher
        loop = asyncio.get_running_loop()
        due = loop.time()
        self.watch.restart(_now_ms())
        self.log.info("feed started", mode=self.settings.mode, symbols=list(self.symbols))
        for step in self._steps:
            due += step.delay_s
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -1.0:
                # Far behind (a paused process, a slow Redis): do not burst to catch up.
                due = loop.time()
            FEED_LAG.observe(max(0.0, loop.time() - due))
            now_ms = _now_ms()
            ticks = [
                MarketTick(
                    symbol=q.symbol,
                    bid=q.bid,
                    ask=q.ask,
                    last=q.last,
                    volume=q.volume,
                    # A live simulated feed's event time is now; a replay keeps the file's time.
                    ts_ms=now_ms if self.settings.mode == "sim" else q.ts_ms,
                )
                for q in step.quotes
            ]
            await publisher.publish_many(ticks)
            for tick in ticks:
                TICKS_PUBLISHED.labels(tick.symbol).inc()
                self.watch.seen(tick.symbol, now_ms)
            self.published += len(ticks)
        # A replay that reached its end is done, not stalled.
        self.finished = True
        self.log.info("feed finished", published=self.published)

    async def watch_stalls(self, resources: Resources) -> None:
        """Every quarter of the threshold: report symbols that went silent, and recoveries."""
        publisher: EventPublisher = resources.publisher
        interval_s = max(0.05, self.settings.stall_ms / 4000.0)
        while True:
            await asyncio.sleep(interval_s)
            if self.finished:
                return
            new, recovered = self.watch.check(_now_ms())
            for stall in new:
                FEED_STALLS.labels(stall.symbol).inc()
                FEED_STALLED.labels(stall.symbol).set(1)
                self.log.warning(
                    "feed stalled",
                    feed=FEED,
                    symbol=stall.symbol,
                    last_seen_ms=stall.last_ts_ms,
                    silent_ms=stall.silent_ms,
                )
                await publisher.publish(
                    FeedStalled(
                        feed=FEED,
                        symbol=stall.symbol,
                        last_seen_ms=stall.last_ts_ms,
                        silent_ms=stall.silent_ms,
                    )
                )
            for symbol in recovered:
                FEED_STALLED.labels(symbol).set(0)
                self.log.info("feed recovered", feed=FEED, symbol=symbol)

    async def check_ready(self) -> None:
        stalled = [] if self.finished else self.watch.stalled
        if stalled:
            detail = ", ".join(f"{s.symbol} silent {s.silent_ms} ms" for s in stalled)
            raise RuntimeError(f"feed stalled: {detail}")


def create_service(settings: BridgeSettings | None = None) -> Service:
    """The eventbus-bridge worker (health and metrics on its side port, 8012)."""
    service = Service(NAME, kind="worker", eventbus=True)
    feed = MarketFeed(settings or BridgeSettings(), service)
    service.background("feed", feed.run)
    service.background("stall-watch", feed.watch_stalls)
    service.add_readiness_check(ReadinessCheck("feed", feed.check_ready))
    return service
