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
    NO_QUOTE = "NO_QUOTE"
    STALE_QUOTE = "STALE_QUOTE"
    EXPOSURE_UNAVAILABLE = "EXPOSURE_UNAVAILABLE"
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
    """Limits in quote currency (notional, loss), base quantity (position) or fractions.

    `slippage_bps` and `taker_fee_bps` are the venue's slippage cap and taker fee: a market
    order can cost up to that much more than the touch, so its notional includes both.
    """

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
    max_quote_age_ms: int = 5_000
    max_fill_lag_ms: int = 2_000
    slippage_bps: Decimal = Decimal(25)
    taker_fee_bps: Decimal = Decimal(10)

    def max_position_for(self, symbol: Symbol) -> Decimal:
        """Position limit for a symbol: its override, else the global one."""
        return self.position_quantity_overrides.get(symbol, self.max_position_quantity)


@dataclass(frozen=True, slots=True)
class ReferenceQuote:
    """Risk-safety's own top of book for a symbol; `as_of_ms` is when it was last true."""

    bid: Decimal
    ask: Decimal
    as_of_ms: int

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2

    def price_for(self, side: Side) -> Decimal:
        """What an order of `side` trades against: the ask for a buy, the bid for a sell."""
        return self.ask if side is Side.BUY else self.bid


@dataclass(frozen=True, slots=True)
class FillsFreshness:
    """How complete the portfolio's view of the fill stream is (portfolio's `fills` object)."""

    booked_sequence: int
    gaps: tuple[int, ...] = ()
    dead_letters: int = 0


@dataclass(frozen=True)
class PortfolioSnapshot:
    """What risk needs from the portfolio (the loss limits), and since when it is complete.

    `as_of_ms` is the last time the portfolio held every fill on the stream; `fills` says
    how far it has booked. A snapshot without `fills` comes from a portfolio that cannot say
    whether it lost a fill, and is treated as stale.
    """

    as_of_ms: int
    equity: Decimal
    peak_equity: Decimal
    daily_pnl: Decimal
    fills: FillsFreshness | None = None
    # What the portfolio itself reports; risk judges positions and exposure from execution's
    # holdings and working orders instead (the portfolio only knows what has been booked).
    gross_exposure: Decimal = ZERO
    positions: Mapping[Symbol, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InFlightOrder:
    """Quantity that may still trade: a working order at the venue, or an unused approval."""

    symbol: Symbol
    side: Side
    quantity: Decimal
    reduce_only: bool = False
    client_order_id: str = ""


@dataclass(frozen=True)
class Exposure:
    """Holdings at the venue plus everything that may still add to or take from them."""

    holdings: Mapping[Symbol, Decimal] = field(default_factory=dict)
    in_flight: Sequence[InFlightOrder] = ()

    def holding(self, symbol: Symbol) -> Decimal:
        return self.holdings.get(symbol, ZERO)

    def pending(self, symbol: Symbol, side: Side, *, reduce_only: bool | None = None) -> Decimal:
        """Quantity in flight on one side of `symbol` (only reduce-only ones if asked)."""
        return sum(
            (
                o.quantity
                for o in self.in_flight
                if o.symbol == symbol
                and o.side is side
                and (reduce_only is None or o.reduce_only is reduce_only)
            ),
            ZERO,
        )

    def worst_case(
        self, symbol: Symbol, extra: OrderRequest | None = None
    ) -> tuple[Decimal, Decimal]:
        """The lowest and highest position `symbol` can reach if any in-flight orders fill."""
        held = self.holding(symbol)
        buys = self.pending(symbol, Side.BUY)
        sells = self.pending(symbol, Side.SELL)
        if extra is not None and extra.symbol == symbol:
            if extra.side is Side.BUY:
                buys += extra.quantity
            else:
                sells += extra.quantity
        return held - sells, held + buys

    def symbols(self) -> set[Symbol]:
        return set(self.holdings) | {o.symbol for o in self.in_flight}


def gross_exposure(
    exposure: Exposure,
    marks: Mapping[Symbol, Decimal],
    extra: OrderRequest | None = None,
) -> Decimal:
    """Worst-case gross exposure: per symbol, the larger of its two extremes, at `marks`.

    Each symbol's in-flight orders may all fill on one side or the other; the worst case
    of any combination of fills is the larger absolute extreme, valued at one set of prices.
    """
    symbols = exposure.symbols() | ({extra.symbol} if extra is not None else set())
    total = ZERO
    for symbol in symbols:
        low, high = exposure.worst_case(symbol, extra)
        size = max(abs(low), abs(high))
        if size != ZERO:
            total += size * marks[symbol]
    return total


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """Outcome of `check_order`. `recommended_state` is set when a loss limit is breached.

    `reference_price` is the price risk judged the order at (its own ask or bid), `notional`
    the order's worst-case cost at that price, for the audit trail.
    """

    approved: bool
    reason: ReasonCode
    detail: str
    recommended_state: TradingState | None = None
    reference_price: Decimal | None = None
    notional: Decimal | None = None


def reduces_position(
    side: Side, quantity: Decimal, position: Decimal, pending: Decimal = ZERO
) -> bool:
    """True if the order shrinks `position` without flipping it, after `pending` same-side
    quantity that may fill first."""
    if position == ZERO or quantity <= ZERO:
        return False
    opposite = (position > ZERO and side is Side.SELL) or (position < ZERO and side is Side.BUY)
    return opposite and quantity + pending <= abs(position)


def order_notional(order: OrderRequest, quote: ReferenceQuote, limits: RiskLimits) -> Decimal:
    """The most an order can cost, fee included.

    A limit order trades at its limit or better. A market buy can pay up to the ask plus the
    venue's slippage cap; a market sell trades at the bid or below, so the bid bounds it.
    """
    fee = 1 + limits.taker_fee_bps / BPS
    if order.limit_price is not None:
        return order.quantity * order.limit_price * fee
    if order.side is Side.BUY:
        return order.quantity * quote.ask * (1 + limits.slippage_bps / BPS) * fee
    return order.quantity * quote.bid * fee


def quote_problem(
    symbol: Symbol, quotes: Mapping[Symbol, ReferenceQuote], now_ms: int, limits: RiskLimits
) -> tuple[ReasonCode, str] | None:
    """Why `symbol` has no usable reference quote, or None if it has one."""
    quote = quotes.get(symbol)
    if quote is None:
        return ReasonCode.NO_QUOTE, f"no market quote for {symbol}"
    age_ms = now_ms - quote.as_of_ms
    if age_ms > limits.max_quote_age_ms:
        return (
            ReasonCode.STALE_QUOTE,
            f"quote for {symbol} is {age_ms} ms old, max {limits.max_quote_age_ms} ms",
        )
    return None


def portfolio_problem(
    portfolio: PortfolioSnapshot | None, now_ms: int, fill_lag_ms: int, limits: RiskLimits
) -> str | None:
    """Why the portfolio cannot be trusted for the loss limits, or None if it can."""
    if portfolio is None:
        return "no portfolio snapshot"
    age_ms = now_ms - portfolio.as_of_ms
    if age_ms > limits.max_portfolio_age_ms:
        return f"portfolio snapshot is {age_ms} ms old, max {limits.max_portfolio_age_ms} ms"
    fills = portfolio.fills
    if fills is None:
        return "portfolio does not report its fill-stream freshness (no fills object)"
    if fills.dead_letters > 0:
        return f"portfolio has {fills.dead_letters} dead-lettered fill(s)"
    if fills.gaps:
        shown = ", ".join(str(g) for g in fills.gaps[:5])
        return f"portfolio is missing fill sequence(s) {shown}"
    if fill_lag_ms > limits.max_fill_lag_ms:
        return (
            f"portfolio has been behind execution's fills for {fill_lag_ms} ms "
            f"(booked up to {fills.booked_sequence}), max {limits.max_fill_lag_ms} ms"
        )
    return None


class FillLagTracker:
    """How long the portfolio has been behind a fill sequence execution already reported.

    Execution's highest fill sequence is remembered with the time it was first seen; the
    lag is the age of the oldest one the portfolio has not booked yet. A portfolio that keeps
    up under steady trading is never "behind" for long, however often fills arrive.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[int, int]] = []  # (sequence, first seen ms), ascending

    def lag_ms(self, *, execution_sequence: int, booked_sequence: int, now_ms: int) -> int:
        if not self._seen or execution_sequence > self._seen[-1][0]:
            self._seen.append((execution_sequence, now_ms))
        self._seen = [(seq, at) for seq, at in self._seen if seq > booked_sequence]
        if not self._seen:
            return 0
        return now_ms - self._seen[0][1]


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
    *,
    portfolio: PortfolioSnapshot | None,
    exposure: Exposure | None,
    quotes: Mapping[Symbol, ReferenceQuote],
    state: TradingState,
    recent_order_times: Sequence[int],
    now_ms: int,
    limits: RiskLimits,
    fill_lag_ms: int = 0,
) -> RiskDecision:
    """Decide whether `order` may be sent. Fails closed on missing or stale data.

    `quotes` are risk-safety's own market quotes: a buy is judged at the ask, a sell at the
    bid. `exposure` is what execution holds and has working plus risk's unused approvals;
    limits hold for any combination of those filling. `portfolio` feeds the loss limits.
    `recent_order_times` are the approval times (epoch ms) of the order-rate window.
    Orders that reduce a position, even in the worst case, skip the exposure and loss
    checks so exits always get out.
    """

    recommended: TradingState | None = None
    reference: Decimal | None = None
    notional: Decimal | None = None

    def deny(reason: ReasonCode, detail: str) -> RiskDecision:
        return RiskDecision(False, reason, detail, recommended, reference, notional)

    invalid = _validate(order)
    if invalid:
        return deny(ReasonCode.INVALID_ORDER, invalid)
    problem = quote_problem(order.symbol, quotes, now_ms, limits)
    if problem is not None:
        return deny(*problem)
    quote = quotes[order.symbol]
    reference = quote.price_for(order.side)
    if exposure is None:
        return deny(
            ReasonCode.EXPOSURE_UNAVAILABLE, "execution's holdings and working orders are unknown"
        )
    stale = portfolio_problem(portfolio, now_ms, fill_lag_ms, limits)
    if stale is not None or portfolio is None:
        return deny(ReasonCode.STALE_PORTFOLIO, stale or "no portfolio snapshot")

    recommended, breach_reason, breach_detail = _recommended_state(portfolio, state, limits)
    position = exposure.holding(order.symbol)
    # Everything in flight on the order's side may fill first, reduce-only or not: the venue
    # does not cap a reduce-only fill at the position, so only this keeps it from flipping.
    pending = exposure.pending(order.symbol, order.side)
    reducing = reduces_position(order.side, order.quantity, position, pending)
    if order.reduce_only and not reducing:
        return deny(
            ReasonCode.INVALID_ORDER,
            f"reduce-only {order.side} {order.quantity} would not reduce position "
            f"{position} after {pending} in flight on that side",
        )

    notional = order_notional(order, quote, limits)
    if order.limit_price is not None:
        distance_bps = abs(order.limit_price - reference) / reference * BPS
        if distance_bps > limits.price_band_bps:
            return deny(
                ReasonCode.PRICE_BAND,
                f"limit {order.limit_price} is {distance_bps:.1f} bps from reference "
                f"{reference}, band {limits.price_band_bps} bps",
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
        if notional > limits.max_order_notional:
            return deny(
                ReasonCode.MAX_NOTIONAL,
                f"order notional {notional:.2f} at {reference} (fee and slippage cap included) "
                f"exceeds max {limits.max_order_notional}",
            )
        low, high = exposure.worst_case(order.symbol, order)
        max_position = limits.max_position_for(order.symbol)
        extreme = high if order.side is Side.BUY else low
        if abs(extreme) > max_position:
            return deny(
                ReasonCode.MAX_POSITION,
                f"position could reach {extreme} {order.symbol} (holding {position}, "
                f"{pending} more in flight on that side), max {max_position}",
            )
        marks: dict[Symbol, Decimal] = {}
        for symbol in sorted(exposure.symbols() | {order.symbol}):
            low, high = exposure.worst_case(symbol, order)
            if low == ZERO and high == ZERO:
                continue
            problem = quote_problem(symbol, quotes, now_ms, limits)
            if problem is not None:
                reason, why = problem
                return deny(reason, f"{why}: cannot value the gross exposure")
            marks[symbol] = quotes[symbol].mid
        gross = gross_exposure(exposure, marks, order)
        if gross > limits.max_gross_exposure:
            return deny(
                ReasonCode.MAX_GROSS_EXPOSURE,
                f"gross exposure could reach {gross:.2f}, max {limits.max_gross_exposure}",
            )
    return RiskDecision(
        True,
        ReasonCode.APPROVED,
        "reducing" if reducing else "",
        recommended,
        reference,
        notional,
    )


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
