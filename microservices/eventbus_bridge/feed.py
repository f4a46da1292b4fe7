"""The market feed, eventbus-bridge's core object: publishes a source's ticks on the bus, paced
in wall-clock time, and watches each symbol for stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

from backend.infra.observability import BoundLogger
from backend.infra.service import Resources
from backend.trading.events import FeedStalled, MarketTick
from backend.trading.marketsim import StalledFeed, detect_stalled_feeds
from backend.trading.types import Symbol

from . import metrics
from .settings import EventbusBridgeSettings
from .sources import Step, replay_quotes, replay_steps, simulated_steps

FEED = "market-data"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MarketFeed:
    """Publishes the configured feed's ticks, paced in wall-clock time, and watches for stalls."""

    def __init__(
        self,
        settings: EventbusBridgeSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.log = logger
        self.tracer = tracer
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

    async def run(self, _resources: Resources | None = None) -> None:
        """The feed loop: each step's ticks are published together, each with its own span."""
        publisher = self.resources.publisher
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
            metrics.FEED_LAG.observe(max(0.0, loop.time() - due))
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
                metrics.TICKS_PUBLISHED.labels(tick.symbol).inc()
                self.watch.seen(tick.symbol, now_ms)
            self.published += len(ticks)
        # A replay that reached its end is done, not stalled.
        self.finished = True
        self.log.info("feed finished", published=self.published)

    async def watch_stalls(self, _resources: Resources | None = None) -> None:
        """Every quarter of the threshold: report symbols that went silent, and recoveries."""
        publisher = self.resources.publisher
        interval_s = max(0.05, self.settings.stall_ms / 4000.0)
        while True:
            await asyncio.sleep(interval_s)
            if self.finished:
                return
            new, recovered = self.watch.check(_now_ms())
            for stall in new:
                metrics.FEED_STALLS.labels(stall.symbol).inc()
                metrics.FEED_STALLED.labels(stall.symbol).set(1)
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
                metrics.FEED_STALLED.labels(symbol).set(0)
                self.log.info("feed recovered", feed=FEED, symbol=symbol)

    async def check_ready(self) -> None:
        stalled = [] if self.finished else self.watch.stalled
        if stalled:
            detail = ", ".join(f"{s.symbol} silent {s.silent_ms} ms" for s in stalled)
            raise RuntimeError(f"feed stalled: {detail}")


class StallWatch:
    """Remembers when each symbol last ticked (wall clock) and reports new stalls once."""

    def __init__(self, expected: Sequence[str], threshold_ms: int, started_ms: int) -> None:
        self.threshold_ms = threshold_ms
        # Expected symbols count as seen at start: a feed gets `threshold_ms` to deliver them.
        self._last_seen: dict[Symbol, int] = {Symbol(s): started_ms for s in expected}
        self._stalled: dict[Symbol, StalledFeed] = {}

    def restart(self, now_ms: int) -> None:
        """Count every symbol as seen now (the feed starts): start-up time is not silence."""
        for symbol in self._last_seen:
            self._last_seen[symbol] = max(self._last_seen[symbol], now_ms)

    def seen(self, symbol: str, now_ms: int) -> None:
        self._last_seen[Symbol(symbol)] = now_ms

    @property
    def stalled(self) -> list[StalledFeed]:
        """Symbols currently stalled, sorted."""
        return [self._stalled[s] for s in sorted(self._stalled)]

    def check(self, now_ms: int) -> tuple[list[StalledFeed], list[Symbol]]:
        """(symbols that stalled since the last check, symbols that recovered since then)."""
        current = {
            s.symbol: s for s in detect_stalled_feeds(self._last_seen, now_ms, self.threshold_ms)
        }
        new = [current[s] for s in sorted(current) if s not in self._stalled]
        recovered = sorted(s for s in self._stalled if s not in current)
        self._stalled = current
        return new, recovered
