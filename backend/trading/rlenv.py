"""A Gymnasium trading environment whose fills, fees and slippage are the paper venue's own.

Every step the agent chooses a target exposure (a fraction of equity held in the symbol); the
environment sends the difference as a market order to a real `PaperVenue`, so the cost of a
trade is exactly what execution would charge for it, then moves to the next quote. The reward
is the log change of equity marked at the mid. The venue is spot: exposure is 0 to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from backend.trading.marketsim import MarketSimulator, SymbolSpec
from backend.trading.rlartifact import RETURN_CAP, RETURN_SCALE
from backend.trading.types import ClientOrderId, OrderRequest, Quote, Side, Symbol
from backend.trading.venue import BPS, PaperVenue, VenueConfig

ZERO = Decimal(0)
DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.5, 1.0)


def simulate_quotes(
    symbol: str,
    *,
    seed: int,
    bars: int,
    initial_price: Decimal = Decimal(40_000),
    bar_ms: int = 60_000,
) -> list[Quote]:
    """`bars` quotes of one symbol from the market simulator; the same seed, the same quotes."""
    simulator = MarketSimulator(
        [SymbolSpec(Symbol(symbol), initial_price)], seed=seed, tick_interval_ms=bar_ms
    )
    return list(simulator.ticks(bars))


def split_window(
    quotes: Sequence[Quote], holdout_fraction: float
) -> tuple[list[Quote], list[Quote]]:
    """(training quotes, held-out quotes): the held-out window is the latest part."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be in (0, 1)")
    cut = len(quotes) - int(len(quotes) * holdout_fraction)
    return list(quotes[:cut]), list(quotes[cut:])


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """What the agent sees and may do, and the account it trades."""

    window: int = 8
    """Past mid returns in an observation."""
    episode_steps: int = 256
    levels: tuple[float, ...] = DEFAULT_LEVELS
    """Target exposures the actions stand for, as fractions of equity."""
    initial_cash: Decimal = Decimal(100_000)
    rebalance_band: float = 0.02
    """No order while the exposure is within this much of the target (fees on dust)."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.episode_steps < 1:
            raise ValueError("window and episode_steps must be positive")
        if not self.levels or any(not 0.0 <= level <= 1.0 for level in self.levels):
            raise ValueError("levels must be exposures in [0, 1] (the venue is spot)")
        if self.initial_cash <= ZERO:
            raise ValueError("initial_cash must be positive")

    @property
    def observation_size(self) -> int:
        return self.window + 1


class TradingEnv(gym.Env[np.ndarray, Any]):
    """Target-exposure trading over a fixed quote series of one symbol, on the paper venue.

    `reset(options={"start": i, "steps": n})` starts at quote `i` for `n` steps (evaluation
    over a whole window); without options the start is drawn from the env's seeded RNG.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        quotes: Sequence[Quote],
        config: EnvConfig | None = None,
        venue_config: VenueConfig | None = None,
    ) -> None:
        self.config = config or EnvConfig()
        self.venue_config = venue_config or VenueConfig()
        if len({q.symbol for q in quotes}) != 1:
            raise ValueError("the quotes must be of exactly one symbol")
        if len(quotes) < self.config.window + 2:
            raise ValueError(f"need at least {self.config.window + 2} quotes, got {len(quotes)}")
        self.quotes = list(quotes)
        self.symbol = self.quotes[0].symbol
        instrument = self.venue_config.instruments.get(self.symbol)
        if instrument is None:
            raise ValueError(f"the venue has no instrument {self.symbol}")
        self._instrument = instrument
        mids = np.array([float(q.mid) for q in self.quotes])
        self._returns = np.zeros(len(mids))
        self._returns[1:] = np.clip(
            np.log(mids[1:] / mids[:-1]) * RETURN_SCALE, -RETURN_CAP, RETURN_CAP
        )
        low = np.full(self.config.observation_size, -RETURN_CAP, dtype=np.float32)
        high = np.full(self.config.observation_size, RETURN_CAP, dtype=np.float32)
        low[-1], high[-1] = 0.0, 2.0  # the exposure (above 1 only if the price jumps)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(len(self.config.levels))
        # Reserve what a buy can cost beyond the ask, so a full-exposure buy is never refused.
        worst_bps = self.venue_config.max_slippage_bps + self.venue_config.taker_fee_bps
        self._buy_headroom = 1 + worst_bps / BPS
        self._venue = PaperVenue(cash=self.config.initial_cash, config=self.venue_config)
        self._t = 0
        self._end = 0
        self._equity = float(self.config.initial_cash)
        self._orders = 0

    # Gymnasium API ---------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        window, last = self.config.window, len(self.quotes) - 1
        options = options or {}
        if "start" in options:
            start = max(int(options["start"]), window)
        else:
            latest = max(window, last - self.config.episode_steps)
            start = int(self.np_random.integers(window, latest + 1))
        steps = int(options.get("steps", self.config.episode_steps))
        self._t = start
        self._end = min(last, start + max(steps, 1))
        if self._end <= start:
            raise ValueError(f"start {start} leaves no step before the last quote")
        self._venue = PaperVenue(cash=self.config.initial_cash, config=self.venue_config)
        self._venue.on_quote(self.quotes[start])
        self._orders = 0
        self._equity = self._mark()
        return self._observation(), self._info(fees=0.0, traded=0.0)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}")
        fees, traded = self._rebalance(self.config.levels[int(action)])
        self._t += 1
        self._venue.on_quote(self.quotes[self._t])
        equity = self._mark()
        reward = math.log(equity / self._equity) if self._equity > 0 and equity > 0 else -1.0
        self._equity = equity
        truncated = self._t >= self._end
        return self._observation(), float(reward), False, truncated, self._info(fees, traded)

    # Internals -------------------------------------------------------------------------------

    def _mark(self) -> float:
        quote = self.quotes[self._t]
        return float(self._venue.cash + self._venue.holding(self.symbol) * quote.mid)

    def exposure(self) -> float:
        """The fraction of equity held in the symbol, at the mid."""
        quote = self.quotes[self._t]
        held = float(self._venue.holding(self.symbol) * quote.mid)
        equity = self._mark()
        return held / equity if equity > 0 else 0.0

    def _rebalance(self, target: float) -> tuple[float, float]:
        """Send the market order that moves the exposure to `target`: (fee paid, notional)."""
        quote = self.quotes[self._t]
        holding = self._venue.holding(self.symbol)
        equity = self._venue.cash + holding * quote.mid
        wanted = self._instrument.floor_quantity(
            equity * Decimal(repr(target)) / (quote.ask * self._buy_headroom)
        )
        delta = wanted - holding
        if equity <= ZERO or abs(delta) * quote.mid <= equity * Decimal(
            repr(self.config.rebalance_band)
        ):
            return 0.0, 0.0
        side = Side.BUY if delta > ZERO else Side.SELL
        self._orders += 1
        request = OrderRequest(
            ClientOrderId(f"rl-{self._t}-{self._orders}"), self.symbol, side, abs(delta)
        )
        report = self._venue.submit(request, quote.ts_ms)
        fees = sum((f.fee for f in report.fills), ZERO)
        notional = sum((f.notional for f in report.fills), ZERO)
        return float(fees), float(notional)

    def _observation(self) -> np.ndarray:
        window = self.config.window
        obs = np.empty(window + 1, dtype=np.float32)
        obs[:window] = self._returns[self._t - window + 1 : self._t + 1]
        obs[window] = min(max(self.exposure(), 0.0), 2.0)
        return obs

    def _info(self, fees: float, traded: float) -> dict[str, Any]:
        return {"equity": self._equity, "fees": fees, "traded": traded, "t": self._t}
