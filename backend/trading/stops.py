"""Exit rules for open positions: stop loss, take profit, a ratcheting trailing stop and a time
limit, each judged at the price source it names (last trade, the exit's side of the book, mark)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Quote, Side, Symbol

ZERO = Decimal(0)
HUNDRED = Decimal(100)
EXIT_ORDER_ID_PREFIX = "pm-"
CLIENT_ORDER_ID_MAX_LEN = 64


class PriceSource(StrEnum):
    """Which price of a quote a rule is judged at."""

    LAST = "LAST"
    """The last trade."""
    BID_ASK = "BID_ASK"
    """The side of the book the exit trades at: the bid for a long, the ask for a short."""
    MARK = "MARK"
    """The mid of bid and ask: the price portfolio-intelligence marks positions at."""

    def price(self, quote: Quote, direction: int) -> Decimal:
        """This source's price in `quote`, for a position of sign `direction` (1 or -1)."""
        if self is PriceSource.LAST:
            return quote.last
        if self is PriceSource.MARK:
            return quote.mid
        return quote.bid if direction > 0 else quote.ask


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
    """Which exits a position has, and the price source each is judged at.

    The trailing stop arms once `trailing_activation` is reached (at once without one); the
    time limit closes the position `time_limit_ms` after it opened, whatever the price.
    """

    stop_loss: Offset | None = None
    take_profit: Offset | None = None
    trailing_stop: Offset | None = None
    trailing_activation: Offset | None = None
    time_limit_ms: int | None = None
    stop_loss_price: PriceSource = PriceSource.BID_ASK
    take_profit_price: PriceSource = PriceSource.BID_ASK
    trailing_price: PriceSource = PriceSource.BID_ASK

    def __post_init__(self) -> None:
        if self.time_limit_ms is not None and self.time_limit_ms <= 0:
            raise ValueError("time limit must be positive")


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """The position an exit protects: signed quantity, average entry price, when it opened."""

    symbol: Symbol
    quantity: Decimal
    entry_price: Decimal
    opened_ms: int = 0


@dataclass(frozen=True, slots=True)
class TrailingState:
    """Best price seen since entry, whether the trailing stop is armed and, once armed, its
    level. The level only ever moves in the position's favour; persist the whole state, so a
    restart resumes from it instead of loosening the stop."""

    best_price: Decimal
    active: bool
    level: Decimal | None = None


class ExitReason(StrEnum):
    """Why a position is being closed."""

    STOP_LOSS = "STOP_LOSS"
    TRAILING_STOP = "TRAILING_STOP"
    TAKE_PROFIT = "TAKE_PROFIT"
    TIME_LIMIT = "TIME_LIMIT"

    @property
    def code(self) -> str:
        """Two letters for client order ids: SL, TS, TP, TL."""
        return _REASON_CODES[self]


_REASON_CODES = {
    ExitReason.STOP_LOSS: "SL",
    ExitReason.TRAILING_STOP: "TS",
    ExitReason.TAKE_PROFIT: "TP",
    ExitReason.TIME_LIMIT: "TL",
}


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


def trailing_level(best: Decimal, direction: int, offset: Offset) -> Decimal:
    """Where a trailing stop `offset` behind `best` stands, for a position of sign `direction`."""
    return best - direction * offset.distance(best)


def ratchet(level: Decimal | None, candidate: Decimal | None, direction: int) -> Decimal | None:
    """The tighter of two trailing levels: the higher for a long, the lower for a short."""
    if level is None:
        return candidate
    if candidate is None:
        return level
    return max(level, candidate) if direction > 0 else min(level, candidate)


def evaluate_exits(
    position: OpenPosition,
    config: ExitConfig,
    quote: Quote,
    state: TrailingState | None = None,
    *,
    now_ms: int | None = None,
) -> StopEvaluation:
    """Check a position's exits against a quote, in the order stop loss, trailing stop, take
    profit, time limit; the first that triggers decides.

    Each rule is judged at its own price source (by default the price the exit would actually
    trade at: the bid for a long, the ask for a short). The trailing level only ever moves in
    the position's favour, also when the trailing offset changes between two calls. The time
    limit needs `now_ms`; without it, it is not checked.
    """
    if quote.symbol != position.symbol:
        raise ValueError(f"quote for {quote.symbol} does not match position in {position.symbol}")
    if position.quantity == ZERO:
        return StopEvaluation(state, None)
    direction = 1 if position.quantity > ZERO else -1
    entry = position.entry_price
    trail_price = config.trailing_price.price(quote, direction)

    if state is None:
        best = trail_price
        active = False
        level: Decimal | None = None
    else:
        best = (
            max(state.best_price, trail_price)
            if direction > 0
            else min(state.best_price, trail_price)
        )
        active = state.active
        level = state.level
    if config.trailing_stop is not None:
        if not active:
            activation = config.trailing_activation
            active = activation is None or (best - entry) * direction >= activation.distance(entry)
        if active:
            level = ratchet(level, trailing_level(best, direction, config.trailing_stop), direction)
    new_state = TrailingState(best, active, level)

    def exit_at(reason: ExitReason, trigger: Decimal, observed: Decimal) -> StopEvaluation:
        side = Side.SELL if direction > 0 else Side.BUY
        decision = ExitDecision(
            position.symbol, side, abs(position.quantity), reason, trigger, observed, quote.ts_ms
        )
        return StopEvaluation(new_state, decision)

    if config.stop_loss is not None:
        price = config.stop_loss_price.price(quote, direction)
        stop = entry - direction * config.stop_loss.distance(entry)
        if (price - stop) * direction <= ZERO:
            return exit_at(ExitReason.STOP_LOSS, stop, price)
    armed = config.trailing_stop is not None and active and level is not None
    if armed and level is not None and (trail_price - level) * direction <= ZERO:
        return exit_at(ExitReason.TRAILING_STOP, level, trail_price)
    if config.take_profit is not None:
        price = config.take_profit_price.price(quote, direction)
        target = entry + direction * config.take_profit.distance(entry)
        if (price - target) * direction >= ZERO:
            return exit_at(ExitReason.TAKE_PROFIT, target, price)
    limit = config.time_limit_ms
    if limit is not None and now_ms is not None and now_ms - position.opened_ms >= limit:
        price = PriceSource.BID_ASK.price(quote, direction)
        return exit_at(ExitReason.TIME_LIMIT, price, price)
    return StopEvaluation(new_state, None)


def exit_client_order_id(
    position_id: str, reason: ExitReason, *, emergency: bool = False, round_: int = 1
) -> ClientOrderId:
    """The client order id of a position's exit: the same position, trigger and stage always
    give the same id, so a restart or a redelivered tick re-sends the order execution already
    has (and gets it back) instead of a second exit.

    `round_` counts the times an operator re-armed the position after an exit gave up; the
    emergency exit of the escalation has an id of its own.
    """
    parts = [EXIT_ORDER_ID_PREFIX + position_id, reason.code]
    if round_ > 1:
        parts.append(f"r{round_}")
    if emergency:
        parts.append("EM")
    readable = "-".join(parts)
    if len(readable) <= CLIENT_ORDER_ID_MAX_LEN:
        return ClientOrderId(readable)
    digest = hashlib.sha256(readable.encode()).hexdigest()[:40]
    return ClientOrderId(f"{EXIT_ORDER_ID_PREFIX}{digest}-{'-'.join(parts[1:])}")
