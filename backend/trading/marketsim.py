"""Seeded market simulator (GBM, jumps, Markov regimes), CSV tick replay, feed-stall checks."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np

from backend.trading.types import Quote, Symbol

MS_PER_YEAR = 365 * 24 * 3600 * 1000
CSV_COLUMNS = ("ts_ms", "symbol", "bid", "ask", "last", "volume")


class Regime(StrEnum):
    """Market regime; the simulator switches between them as a Markov chain."""

    CALM = "CALM"
    VOLATILE = "VOLATILE"
    TRENDING = "TRENDING"


@dataclass(frozen=True, slots=True)
class RegimeParams:
    """Dynamics of one regime. Rates are annualised so the tick interval can change freely."""

    drift_annual: float
    vol_annual: float
    jumps_per_year: float
    jump_mean: float
    jump_std: float
    half_spread_bps: float
    volume_multiplier: float
    mean_duration_ms: int


# In TRENDING the drift's sign is drawn each time the regime is entered.
DEFAULT_REGIMES: Mapping[Regime, RegimeParams] = {
    Regime.CALM: RegimeParams(0.0, 0.6, 50.0, 0.0, 0.002, 1.0, 1.0, 10 * 60_000),
    Regime.VOLATILE: RegimeParams(0.0, 2.0, 500.0, 0.0, 0.006, 4.0, 2.5, 3 * 60_000),
    Regime.TRENDING: RegimeParams(60.0, 0.9, 50.0, 0.0, 0.002, 1.5, 1.5, 5 * 60_000),
}


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """A simulated instrument: start price, price increment and typical quantity at the touch."""

    symbol: Symbol
    initial_price: Decimal
    price_increment: Decimal = Decimal("0.01")
    base_volume: Decimal = Decimal(10)
    volume_decimals: int = 4


@dataclass(slots=True)
class _SymbolState:
    spec: SymbolSpec
    mid: float
    regime: Regime
    trend_sign: float
    last_ts_ms: int = field(default=0)


class MarketSimulator:
    """Generates quotes for several symbols; the same seed always yields the same ticks."""

    def __init__(
        self,
        symbols: Sequence[SymbolSpec],
        *,
        seed: int,
        start_ms: int = 1_700_000_000_000,
        tick_interval_ms: int = 1_000,
        regimes: Mapping[Regime, RegimeParams] = DEFAULT_REGIMES,
    ) -> None:
        if not symbols:
            raise ValueError("at least one symbol is required")
        if tick_interval_ms <= 0:
            raise ValueError("tick_interval_ms must be positive")
        if set(regimes) != set(Regime):
            raise ValueError("regime parameters must cover every Regime")
        self._rng = np.random.default_rng(seed)
        self._regimes = dict(regimes)
        self._interval_ms = tick_interval_ms
        self._dt = tick_interval_ms / MS_PER_YEAR
        self._now_ms = start_ms
        self._states = [
            _SymbolState(spec, float(spec.initial_price), Regime.CALM, 1.0) for spec in symbols
        ]

    @property
    def now_ms(self) -> int:
        """Event time of the most recent step."""
        return self._now_ms

    def regime(self, symbol: Symbol) -> Regime:
        """Current regime of a symbol."""
        for state in self._states:
            if state.spec.symbol == symbol:
                return state.regime
        raise KeyError(symbol)

    def set_regime(self, symbol: Symbol, regime: Regime, *, trend_sign: float = 1.0) -> None:
        """Put a symbol in `regime` now (a regime change on demand, e.g. a drift scenario); in
        TRENDING, `trend_sign` (+1 or -1) is the trend's direction. The Markov chain carries
        on from there with the regime's mean duration."""
        if trend_sign not in (1.0, -1.0):
            raise ValueError(f"trend_sign must be +1 or -1, got {trend_sign}")
        for state in self._states:
            if state.spec.symbol == symbol:
                state.regime = Regime(regime)
                state.trend_sign = trend_sign
                return
        raise KeyError(f"no simulated symbol {symbol!r}")

    def step(self) -> list[Quote]:
        """Advance one tick interval and return one quote per symbol."""
        self._now_ms += self._interval_ms
        return [self._advance(state) for state in self._states]

    def ticks(self, steps: int) -> Iterator[Quote]:
        """Quotes for `steps` tick intervals, symbols interleaved in their configured order."""
        for _ in range(steps):
            yield from self.step()

    def _advance(self, state: _SymbolState) -> Quote:
        rng = self._rng
        self._maybe_switch_regime(state)
        params = self._regimes[state.regime]
        drift = params.drift_annual * (state.trend_sign if state.regime is Regime.TRENDING else 1)
        dt = self._dt
        log_return = (drift - 0.5 * params.vol_annual**2) * dt + params.vol_annual * math.sqrt(
            dt
        ) * float(rng.standard_normal())
        jumps = int(rng.poisson(params.jumps_per_year * dt))
        if jumps:
            log_return += float(rng.normal(params.jump_mean, params.jump_std, size=jumps).sum())
        state.mid *= math.exp(log_return)

        spec = state.spec
        half_spread = state.mid * params.half_spread_bps / 10_000
        # Quantising bid down and ask up keeps the spread at least one increment wide.
        bid = _quantize(state.mid - half_spread, spec.price_increment, ROUND_FLOOR)
        ask = _quantize(state.mid + half_spread, spec.price_increment, ROUND_CEILING)
        if ask <= bid:
            ask = bid + spec.price_increment
        last = ask if rng.random() < 0.5 else bid
        volume_draw = float(spec.base_volume) * params.volume_multiplier * rng.lognormal(0.0, 0.5)
        volume = Decimal(f"{volume_draw:.{spec.volume_decimals}f}")
        return Quote(spec.symbol, bid, ask, last, volume, self._now_ms)

    def _maybe_switch_regime(self, state: _SymbolState) -> None:
        current = self._regimes[state.regime]
        leave_probability = 1.0 - math.exp(-self._interval_ms / current.mean_duration_ms)
        if self._rng.random() >= leave_probability:
            return
        others = [regime for regime in Regime if regime is not state.regime]
        state.regime = others[int(self._rng.integers(len(others)))]
        if state.regime is Regime.TRENDING:
            state.trend_sign = 1.0 if self._rng.random() < 0.5 else -1.0


def _quantize(value: float, increment: Decimal, rounding: str) -> Decimal:
    steps = (Decimal(repr(value)) / increment).to_integral_value(rounding=rounding)
    return max(steps, Decimal(1)) * increment


def parse_ticks_csv(text: str) -> list[Quote]:
    """Parse CSV text with columns ts_ms,symbol,bid,ask,last,volume into quotes.

    Raises ValueError naming the line and column of the first malformed value.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ValueError("line 1: empty CSV, expected header " + ",".join(CSV_COLUMNS))
    header = [name.strip() for name in header]
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise ValueError(f"line 1: missing column(s) {', '.join(missing)}")
    index = {name: header.index(name) for name in CSV_COLUMNS}
    quotes: list[Quote] = []
    last_ts: dict[Symbol, int] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"line {line}: expected {len(header)} fields, got {len(row)}")
        quote = _parse_row(row, index, line)
        previous = last_ts.get(quote.symbol)
        if previous is not None and quote.ts_ms < previous:
            raise ValueError(
                f"line {line}, column ts_ms: {quote.ts_ms} is earlier than {previous} "
                f"for {quote.symbol}"
            )
        last_ts[quote.symbol] = quote.ts_ms
        quotes.append(quote)
    return quotes


def _parse_row(row: list[str], index: Mapping[str, int], line: int) -> Quote:
    def cell(column: str) -> str:
        return row[index[column]].strip()

    raw_ts = cell("ts_ms")
    try:
        ts_ms = int(raw_ts)
    except ValueError:
        raise ValueError(f"line {line}, column ts_ms: not an integer: {raw_ts!r}") from None
    symbol = cell("symbol")
    if not symbol:
        raise ValueError(f"line {line}, column symbol: empty")
    values: dict[str, Decimal] = {}
    for column in ("bid", "ask", "last", "volume"):
        raw = cell(column)
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise ValueError(f"line {line}, column {column}: not a number: {raw!r}") from None
        if not value.is_finite():
            raise ValueError(f"line {line}, column {column}: not finite: {raw!r}")
        if column == "volume" and value < 0:
            raise ValueError(f"line {line}, column volume: negative: {raw!r}")
        if column != "volume" and value <= 0:
            raise ValueError(f"line {line}, column {column}: not positive: {raw!r}")
        values[column] = value
    if values["bid"] > values["ask"]:
        raise ValueError(f"line {line}, column ask: {values['ask']} is below bid {values['bid']}")
    return Quote(
        Symbol(symbol), values["bid"], values["ask"], values["last"], values["volume"], ts_ms
    )


def load_ticks_csv(path: str | PathLike[str]) -> list[Quote]:
    """Read a tick CSV file; see `parse_ticks_csv` for the format and errors."""
    return parse_ticks_csv(Path(path).read_text(encoding="utf-8"))


def load_sample_ticks() -> list[Quote]:
    """The small tick file bundled with the package, generated by `MarketSimulator`."""
    text = resources.files("backend.trading").joinpath("data/sample_ticks.csv").read_text("utf-8")
    return parse_ticks_csv(text)


def ticks_to_csv(quotes: Iterable[Quote]) -> str:
    """Render quotes in the format `parse_ticks_csv` reads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for q in quotes:
        writer.writerow([q.ts_ms, q.symbol, q.bid, q.ask, q.last, q.volume])
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class StalledFeed:
    """A symbol whose feed has been silent too long; `last_ts_ms` is None if never seen."""

    symbol: Symbol
    last_ts_ms: int | None
    silent_ms: int | None


def detect_stalled_feeds(
    last_tick_ms: Mapping[Symbol, int],
    now_ms: int,
    threshold_ms: int,
    expected: Iterable[Symbol] = (),
) -> list[StalledFeed]:
    """Symbols with no tick for more than `threshold_ms`, plus expected symbols never seen.

    The result is sorted by symbol so reports and alerts are stable.
    """
    if threshold_ms <= 0:
        raise ValueError("threshold_ms must be positive")
    stalled: list[StalledFeed] = []
    for symbol in sorted(set(last_tick_ms) | set(expected)):
        last = last_tick_ms.get(symbol)
        if last is None:
            stalled.append(StalledFeed(symbol, None, None))
        elif now_ms - last > threshold_ms:
            stalled.append(StalledFeed(symbol, last, now_ms - last))
    return stalled
