"""Feed sources: the seeded simulator and a CSV replay, each as a schedule of paced steps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import groupby

from backend.trading.marketsim import (
    MarketSimulator,
    SymbolSpec,
    load_sample_ticks,
    load_ticks_csv,
)
from backend.trading.types import Quote, Symbol

from .settings import EventbusBridgeSettings

# Start prices of the simulated instruments; other symbols start at 100.
_INITIAL_PRICES: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    # symbol: (initial price, price increment, quantity at the touch)
    "BTCUSDT": (Decimal(40_000), Decimal("0.01"), Decimal(2)),
    "ETHUSDT": (Decimal(2_500), Decimal("0.01"), Decimal(20)),
    "SOLUSDT": (Decimal(100), Decimal("0.001"), Decimal(300)),
}


@dataclass(frozen=True, slots=True)
class Step:
    """Quotes to publish together, `delay_s` of wall-clock time after the previous step."""

    delay_s: float
    quotes: tuple[Quote, ...]


def symbol_specs(symbols: Sequence[str]) -> list[SymbolSpec]:
    specs = []
    for symbol in symbols:
        price, increment, volume = _INITIAL_PRICES.get(
            symbol, (Decimal(100), Decimal("0.01"), Decimal(100))
        )
        specs.append(SymbolSpec(Symbol(symbol), price, increment, volume))
    return specs


def simulated_steps(settings: EventbusBridgeSettings, start_ms: int) -> Iterator[Step]:
    """One step per tick interval, forever; the same seed always gives the same prices.

    Each step advances the market by `tick interval x speed-up`, so a speed-up moves prices
    faster without publishing more ticks than `FEED_RATE_HZ` asks for.
    """
    interval_ms = max(1, round(1000.0 * settings.tick_interval_s * settings.speedup))
    simulator = MarketSimulator(
        symbol_specs(settings.symbols),
        seed=settings.seed,
        start_ms=start_ms,
        tick_interval_ms=interval_ms,
    )
    first = True
    while True:
        yield Step(0.0 if first else settings.tick_interval_s, tuple(simulator.step()))
        first = False


def replay_quotes(settings: EventbusBridgeSettings) -> list[Quote]:
    """The replay file's quotes (the bundled sample unless `FEED_CSV` names one)."""
    if settings.csv_path is not None:
        return load_ticks_csv(settings.csv_path)
    return load_sample_ticks()


def replay_steps(quotes: Sequence[Quote], speedup: float, loop: bool) -> Iterator[Step]:
    """The file's quotes grouped by timestamp, paced by their time gaps divided by `speedup`.

    When looping, each pass is shifted by the file's span (plus one gap) so event time keeps
    increasing.
    """
    if not quotes:
        return
    ordered = sorted(quotes, key=lambda q: q.ts_ms)
    span_ms = ordered[-1].ts_ms - ordered[0].ts_ms
    groups = [(ts, tuple(group)) for ts, group in groupby(ordered, key=lambda q: q.ts_ms)]
    gap_ms = (span_ms // (len(groups) - 1)) if len(groups) > 1 else 1_000
    offset = 0
    previous: int | None = None
    while True:
        for ts, group in groups:
            shifted = ts + offset
            delay = 0.0 if previous is None else (shifted - previous) / 1000.0 / speedup
            previous = shifted
            yield Step(delay, tuple(_shift(q, offset) for q in group) if offset else group)
        if not loop:
            return
        offset += span_ms + gap_ms


def _shift(quote: Quote, offset_ms: int) -> Quote:
    return Quote(
        quote.symbol, quote.bid, quote.ask, quote.last, quote.volume, quote.ts_ms + offset_ms
    )
