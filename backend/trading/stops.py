"""Exit rules for open positions: stop loss, take profit and a ratcheting trailing stop."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Quote, Side, Symbol

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class OffsetKind(StrEnum):
    """How an exit distance is expressed."""

    PERCENT = "PERCENT"
    ABSOLUTE = "ABSOLUTE"


@dataclass(frozen=True, slots=True)
class Offset:
    """A price distance: a percentage of a reference price, or an absolute amount."""

    value: Decimal
    kind: OffsetKind

    def __post_init__(self) -> None:
        if self.value <= ZERO:
            raise ValueError("offset must be positive")

    @classmethod
    def percent(cls, value: Decimal) -> Offset:
        """`value` percent of the reference price (2 means 2%)."""
        return cls(value, OffsetKind.PERCENT)

    @classmethod
    def absolute(cls, value: Decimal) -> Offset:
        """A fixed price distance."""
        return cls(value, OffsetKind.ABSOLUTE)

    def distance(self, reference: Decimal) -> Decimal:
        """The offset in price units from `reference`."""
        return reference * self.value / HUNDRED if self.kind is OffsetKind.PERCENT else self.value


@dataclass(frozen=True, slots=True)
class ExitConfig:
    """Which exits a position has. The trailing stop arms once `trailing_activation` is reached."""

    stop_loss: Offset | None = None
    take_profit: Offset | None = None
    trailing_stop: Offset | None = None
    trailing_activation: Offset | None = None


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """The position an exit protects: signed quantity and average entry price."""

    symbol: Symbol
    quantity: Decimal
    entry_price: Decimal


@dataclass(frozen=True, slots=True)
class TrailingState:
    """Best price seen since entry and whether the trailing stop is armed; persist it."""

    best_price: Decimal
    active: bool


class ExitReason(StrEnum):
    """Why a position is being closed."""

    STOP_LOSS = "STOP_LOSS"
    TRAILING_STOP = "TRAILING_STOP"
    TAKE_PROFIT = "TAKE_PROFIT"


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """Close the whole position: a reduce-only order on the opposite side."""

    symbol: Symbol
    side: Side
    quantity: Decimal
    reason: ExitReason
    trigger_price: Decimal
    observed_price: Decimal
    ts_ms: int
    reduce_only: bool = True

    def to_order_request(self, client_order_id: ClientOrderId) -> OrderRequest:
        """The reduce-only market order that carries out this exit."""
        return OrderRequest(
            client_order_id,
            self.symbol,
            self.side,
            self.quantity,
            OrderType.MARKET,
            None,
            reduce_only=True,
        )


@dataclass(frozen=True, slots=True)
class StopEvaluation:
    """The updated trailing state and, if an exit triggered, the decision."""

    state: TrailingState | None
    exit: ExitDecision | None


def evaluate_exits(
    position: OpenPosition,
    config: ExitConfig,
    quote: Quote,
    state: TrailingState | None = None,
) -> StopEvaluation:
    """Check a position's exits against a quote, in the order stop loss, trailing, take profit.

    Longs are checked against the bid and shorts against the ask: the price the exit would
    actually trade at. The trailing stop only ever moves in the position's favour.
    """
    if quote.symbol != position.symbol:
        raise ValueError(f"quote for {quote.symbol} does not match position in {position.symbol}")
    if position.quantity == ZERO:
        return StopEvaluation(state, None)
    direction = 1 if position.quantity > ZERO else -1
    price = quote.bid if direction > 0 else quote.ask
    entry = position.entry_price

    if state is None:
        best = price
        active = False
    else:
        best = max(state.best_price, price) if direction > 0 else min(state.best_price, price)
        active = state.active
    if config.trailing_stop is not None and not active:
        activation = config.trailing_activation
        active = activation is None or (best - entry) * direction >= activation.distance(entry)
    new_state = TrailingState(best, active)

    def exit_at(reason: ExitReason, level: Decimal) -> StopEvaluation:
        side = Side.SELL if direction > 0 else Side.BUY
        decision = ExitDecision(
            position.symbol, side, abs(position.quantity), reason, level, price, quote.ts_ms
        )
        return StopEvaluation(new_state, decision)

    if config.stop_loss is not None:
        level = entry - direction * config.stop_loss.distance(entry)
        if (price - level) * direction <= ZERO:
            return exit_at(ExitReason.STOP_LOSS, level)
    if config.trailing_stop is not None and active:
        level = best - direction * config.trailing_stop.distance(best)
        if (price - level) * direction <= ZERO:
            return exit_at(ExitReason.TRAILING_STOP, level)
    if config.take_profit is not None:
        level = entry + direction * config.take_profit.distance(entry)
        if (price - level) * direction >= ZERO:
            return exit_at(ExitReason.TAKE_PROFIT, level)
    return StopEvaluation(new_state, None)
