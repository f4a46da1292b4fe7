"""Pre-trade risk checks and the ACTIVE / REDUCING / HALTED trading-state machine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from backend.trading.types import OrderRequest, OrderType, Side, Symbol

ZERO = Decimal(0)
BPS = Decimal(10_000)


class TradingState(StrEnum):
    """Whether new risk may be taken (ACTIVE) or only positions reduced (REDUCING, HALTED).

    Both REDUCING and HALTED admit only position-reducing orders; HALTED is the kill-switch
    state a human must lift, REDUCING is where a loss limit puts trading automatically.
    """

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


ALLOWED_STATE_TRANSITIONS: Mapping[TradingState, frozenset[TradingState]] = {
    TradingState.ACTIVE: frozenset({TradingState.REDUCING, TradingState.HALTED}),
    TradingState.REDUCING: frozenset({TradingState.ACTIVE, TradingState.HALTED}),
    TradingState.HALTED: frozenset({TradingState.ACTIVE, TradingState.REDUCING}),
}


class InvalidStateTransition(ValueError):
    """Raised for a trading-state change the transition table does not allow."""

    def __init__(self, from_state: TradingState, to_state: TradingState) -> None:
        super().__init__(f"trading state cannot move from {from_state} to {to_state}")
        self.from_state = from_state
        self.to_state = to_state


def transition_state(current: TradingState, target: TradingState) -> TradingState:
    """Return `target` if the move is allowed, else raise InvalidStateTransition."""
    if target not in ALLOWED_STATE_TRANSITIONS[current]:
        raise InvalidStateTransition(current, target)
    return target


class ReasonCode(StrEnum):
    """Standard outcome of a pre-trade check."""

    APPROVED = "APPROVED"
    INVALID_ORDER = "INVALID_ORDER"
    NO_REFERENCE_PRICE = "NO_REFERENCE_PRICE"
    STALE_PORTFOLIO = "STALE_PORTFOLIO"
    PRICE_BAND = "PRICE_BAND"
    ORDER_RATE = "ORDER_RATE"
    HALTED = "HALTED"
    REDUCING_ONLY = "REDUCING_ONLY"
    DAILY_LOSS = "DAILY_LOSS"
    DRAWDOWN = "DRAWDOWN"
    MAX_NOTIONAL = "MAX_NOTIONAL"
    MAX_POSITION = "MAX_POSITION"
    MAX_GROSS_EXPOSURE = "MAX_GROSS_EXPOSURE"


@dataclass(frozen=True)
class RiskLimits:
    """Limits in quote currency (notional, loss), base quantity (position) or fractions."""

    max_order_notional: Decimal
    max_position_quantity: Decimal
    max_gross_exposure: Decimal
    max_daily_loss: Decimal
    max_drawdown_fraction: Decimal
    max_orders_per_window: int
    order_window_ms: int
    price_band_bps: Decimal
    max_portfolio_age_ms: int
    position_quantity_overrides: Mapping[Symbol, Decimal] = field(default_factory=dict)

    def max_position_for(self, symbol: Symbol) -> Decimal:
        """Position limit for a symbol: its override, else the global one."""
        return self.position_quantity_overrides.get(symbol, self.max_position_quantity)


@dataclass(frozen=True)
class PortfolioSnapshot:
    """What risk needs to know about the portfolio, and when it was true (`as_of_ms`)."""

    as_of_ms: int
    equity: Decimal
    peak_equity: Decimal
    daily_pnl: Decimal
    gross_exposure: Decimal
    positions: Mapping[Symbol, Decimal] = field(default_factory=dict)

    def position(self, symbol: Symbol) -> Decimal:
        """Signed quantity held in `symbol` (zero if none)."""
        return self.positions.get(symbol, ZERO)


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """Outcome of `check_order`. `recommended_state` is set when a loss limit is breached."""

    approved: bool
    reason: ReasonCode
    detail: str
    recommended_state: TradingState | None = None


def reduces_position(side: Side, quantity: Decimal, position: Decimal) -> bool:
    """True if the order shrinks an existing position without flipping it through zero."""
    if position == ZERO or quantity <= ZERO:
        return False
    opposite = (position > ZERO and side is Side.SELL) or (position < ZERO and side is Side.BUY)
    return opposite and quantity <= abs(position)


def _recommended_state(
    portfolio: PortfolioSnapshot, state: TradingState, limits: RiskLimits
) -> tuple[TradingState | None, ReasonCode | None, str]:
    breached: TradingState | None = None
    reason: ReasonCode | None = None
    detail = ""
    if portfolio.daily_pnl <= -limits.max_daily_loss:
        breached, reason = TradingState.REDUCING, ReasonCode.DAILY_LOSS
        detail = f"daily pnl {portfolio.daily_pnl} breaches max daily loss {limits.max_daily_loss}"
    if portfolio.peak_equity > ZERO:
        drawdown = (portfolio.peak_equity - portfolio.equity) / portfolio.peak_equity
        if drawdown >= limits.max_drawdown_fraction:
            # Drawdown is the more severe breach, so it wins over the daily loss.
            breached, reason = TradingState.HALTED, ReasonCode.DRAWDOWN
            detail = (
                f"drawdown {drawdown:.4f} from peak {portfolio.peak_equity} "
                f"breaches max {limits.max_drawdown_fraction}"
            )
    if breached is None:
        return None, None, ""
    if breached is state or state is TradingState.HALTED:
        return None, reason, detail
    return breached, reason, detail


def check_order(
    order: OrderRequest,
    portfolio: PortfolioSnapshot | None,
    state: TradingState,
    recent_order_times: Sequence[int],
    now_ms: int,
    limits: RiskLimits,
    *,
    reference_price: Decimal | None,
) -> RiskDecision:
    """Decide whether `order` may be sent. Fails closed on missing or stale data.

    `recent_order_times` are the submit times (epoch ms) of earlier orders; `reference_price`
    is the current market price of the symbol, used for notional, exposure and the price band.
    Orders that reduce a position skip the exposure and loss checks so exits always get out.
    """

    recommended: TradingState | None = None

    def deny(reason: ReasonCode, detail: str) -> RiskDecision:
        return RiskDecision(False, reason, detail, recommended)

    invalid = _validate(order)
    if invalid:
        return deny(ReasonCode.INVALID_ORDER, invalid)
    if reference_price is None or reference_price <= ZERO:
        return deny(ReasonCode.NO_REFERENCE_PRICE, f"no usable reference price for {order.symbol}")
    if portfolio is None:
        return deny(ReasonCode.STALE_PORTFOLIO, "no portfolio snapshot")
    age_ms = now_ms - portfolio.as_of_ms
    if age_ms > limits.max_portfolio_age_ms:
        return deny(
            ReasonCode.STALE_PORTFOLIO,
            f"portfolio snapshot is {age_ms} ms old, max {limits.max_portfolio_age_ms} ms",
        )

    recommended, breach_reason, breach_detail = _recommended_state(portfolio, state, limits)
    position = portfolio.position(order.symbol)
    reducing = reduces_position(order.side, order.quantity, position)
    if order.reduce_only and not reducing:
        return deny(
            ReasonCode.INVALID_ORDER,
            f"reduce-only {order.side} {order.quantity} would not reduce position {position}",
        )

    if order.order_type is OrderType.LIMIT and order.limit_price is not None:
        distance_bps = abs(order.limit_price - reference_price) / reference_price * BPS
        if distance_bps > limits.price_band_bps:
            return deny(
                ReasonCode.PRICE_BAND,
                f"limit {order.limit_price} is {distance_bps:.1f} bps from reference "
                f"{reference_price}, band {limits.price_band_bps} bps",
            )

    window_start = now_ms - limits.order_window_ms
    recent = sum(1 for ts in recent_order_times if window_start < ts <= now_ms)
    if recent >= limits.max_orders_per_window:
        return deny(
            ReasonCode.ORDER_RATE,
            f"{recent} orders in the last {limits.order_window_ms} ms, "
            f"max {limits.max_orders_per_window}",
        )

    if not reducing:
        if state is TradingState.HALTED:
            return deny(ReasonCode.HALTED, "trading is halted; only reducing orders pass")
        if state is TradingState.REDUCING:
            return deny(ReasonCode.REDUCING_ONLY, "trading is reducing; only reducing orders pass")
        if breach_reason is not None:
            return deny(breach_reason, breach_detail)
        price = order.limit_price if order.limit_price is not None else reference_price
        notional = order.quantity * price
        if notional > limits.max_order_notional:
            return deny(
                ReasonCode.MAX_NOTIONAL,
                f"order notional {notional} exceeds max {limits.max_order_notional}",
            )
        new_position = position + order.signed_quantity
        max_position = limits.max_position_for(order.symbol)
        if abs(new_position) > max_position:
            return deny(
                ReasonCode.MAX_POSITION,
                f"position would be {new_position} {order.symbol}, max {max_position}",
            )
        new_gross = (
            portfolio.gross_exposure
            - abs(position) * reference_price
            + abs(new_position) * reference_price
        )
        if new_gross > limits.max_gross_exposure:
            return deny(
                ReasonCode.MAX_GROSS_EXPOSURE,
                f"gross exposure would be {new_gross}, max {limits.max_gross_exposure}",
            )
    return RiskDecision(True, ReasonCode.APPROVED, "reducing" if reducing else "", recommended)


def _validate(order: OrderRequest) -> str:
    if not order.quantity.is_finite() or order.quantity <= ZERO:
        return f"quantity must be positive, got {order.quantity}"
    if order.order_type is OrderType.LIMIT:
        if order.limit_price is None or not order.limit_price.is_finite():
            return "limit order needs a limit price"
        if order.limit_price <= ZERO:
            return f"limit price must be positive, got {order.limit_price}"
    elif order.limit_price is not None:
        return "market order must not carry a limit price"
    return ""
