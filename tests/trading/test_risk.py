"""Risk rules: own reference quotes, in-flight exposure, fail-closed freshness, the states."""

from dataclasses import replace
from decimal import Decimal
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.risk import (
    ALLOWED_STATE_TRANSITIONS,
    Exposure,
    FillLagTracker,
    FillsFreshness,
    InFlightOrder,
    InvalidStateTransition,
    PortfolioSnapshot,
    ReasonCode,
    ReferenceQuote,
    RiskDecision,
    RiskLimits,
    TradingState,
    check_order,
    order_notional,
    reduces_position,
    transition_state,
)
from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Side, Symbol
from tests.support.factories import BTC, ETH, request

NOW = 1_000_000
PRICE = Decimal(100)
LIMITS = RiskLimits(
    max_order_notional=Decimal(1_000),
    max_position_quantity=Decimal(20),
    max_gross_exposure=Decimal(5_000),
    max_daily_loss=Decimal(500),
    max_drawdown_fraction=Decimal("0.2"),
    max_orders_per_window=3,
    order_window_ms=60_000,
    price_band_bps=Decimal(100),
    max_portfolio_age_ms=5_000,
    # Most tests read easier without the venue's costs; the tests of costs set them.
    slippage_bps=Decimal(0),
    taker_fee_bps=Decimal(0),
)
HEALTHY = PortfolioSnapshot(
    as_of_ms=NOW - 1_000,
    equity=Decimal(10_000),
    peak_equity=Decimal(10_000),
    daily_pnl=Decimal(0),
    fills=FillsFreshness(booked_sequence=7),
)
QUOTES = {
    BTC: ReferenceQuote(PRICE, PRICE, NOW - 100),
    ETH: ReferenceQuote(PRICE, PRICE, NOW - 100),
}
HOLDING = Exposure(holdings={BTC: Decimal(5)})


def check(
    order: OrderRequest,
    portfolio: PortfolioSnapshot | None = HEALTHY,
    state: TradingState = TradingState.ACTIVE,
    recent: tuple[int, ...] = (),
    limits: RiskLimits = LIMITS,
    quotes: dict[Symbol, ReferenceQuote] | None = None,
    exposure: Exposure | None = HOLDING,
    fill_lag_ms: int = 0,
) -> RiskDecision:
    return check_order(
        order,
        portfolio=portfolio,
        exposure=exposure,
        quotes=QUOTES if quotes is None else quotes,
        state=state,
        recent_order_times=recent,
        now_ms=NOW,
        limits=limits,
        fill_lag_ms=fill_lag_ms,
    )


def assert_denied(decision: RiskDecision, reason: ReasonCode) -> None:
    assert not decision.approved
    assert decision.reason is reason
    assert decision.detail


def test_ordinary_order_within_all_limits_is_approved() -> None:
    decision = check(request(Side.BUY, "5"))
    assert decision.approved and decision.reason is ReasonCode.APPROVED
    assert decision.recommended_state is None


# --- order validity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        request(Side.BUY, "0"),
        request(Side.BUY, "-1"),
        OrderRequest(
            request(Side.BUY, "1").client_order_id, BTC, Side.BUY, Decimal(1), OrderType.LIMIT, None
        ),
        request(Side.BUY, "1", limit="-5"),
        OrderRequest(
            request(Side.BUY, "1").client_order_id,
            BTC,
            Side.BUY,
            Decimal(1),
            OrderType.MARKET,
            Decimal(100),
        ),
    ],
)
def test_malformed_order_is_invalid(order: OrderRequest) -> None:
    assert_denied(check(order), ReasonCode.INVALID_ORDER)


# --- the reference price: risk's own quotes -------------------------------------------------


def test_no_quote_for_the_symbol_fails_closed() -> None:
    decision = check(request(Side.BUY, "1"), quotes={ETH: QUOTES[ETH]})
    assert_denied(decision, ReasonCode.NO_QUOTE)
    assert "BTCUSDT" in decision.detail


def test_a_quote_older_than_the_max_age_fails_closed_even_for_exits() -> None:
    old = {BTC: ReferenceQuote(PRICE, PRICE, NOW - 5_001)}
    assert_denied(
        check(request(Side.SELL, "1", reduce_only=True), quotes=old), ReasonCode.STALE_QUOTE
    )
    exact = {BTC: ReferenceQuote(PRICE, PRICE, NOW - 5_000)}
    assert check(request(Side.BUY, "1"), quotes=exact).approved


def test_a_buy_is_judged_at_the_ask_and_a_sell_at_the_bid() -> None:
    quotes = {**QUOTES, BTC: ReferenceQuote(Decimal(90), Decimal(110), NOW)}
    buy = check(request(Side.BUY, "9.1"), quotes=quotes)  # 9.1 x 110 = 1001
    assert_denied(buy, ReasonCode.MAX_NOTIONAL)
    assert buy.reference_price == Decimal(110)
    sell = check(request(Side.SELL, "11.1"), quotes=quotes)  # 11.1 x 90 = 999
    assert sell.approved and sell.reference_price == Decimal(90)


def test_audit_f1_a_caller_price_cannot_shrink_the_notional() -> None:
    # 0.7 BTC at the real ask of about 40 000 is 28 000, past a 25 000 limit; whatever
    # price the caller believes, risk only ever sees its own quote.
    limits = replace(LIMITS, max_order_notional=Decimal(25_000), max_gross_exposure=Decimal(10**9))
    quotes = {BTC: ReferenceQuote(Decimal("39976.5"), Decimal("39977.0"), NOW)}
    decision = check(request(Side.BUY, "0.7"), limits=limits, quotes=quotes, exposure=Exposure())
    assert_denied(decision, ReasonCode.MAX_NOTIONAL)


def test_a_market_buy_notional_includes_the_slippage_cap_and_the_taker_fee() -> None:
    limits = replace(LIMITS, slippage_bps=Decimal(25), taker_fee_bps=Decimal(10))
    order = request(Side.BUY, "2")
    expected = Decimal(2) * PRICE * Decimal("1.0025") * Decimal("1.001")
    assert order_notional(order, QUOTES[BTC], limits) == expected
    # 9.96 x 100 = 996 at the touch, but 998.49 with slippage and 999.49 with the fee.
    assert check(request(Side.BUY, "9.96"), limits=limits).approved
    assert_denied(check(request(Side.BUY, "9.98"), limits=limits), ReasonCode.MAX_NOTIONAL)


def test_a_market_sell_notional_is_the_bid_plus_the_fee() -> None:
    limits = replace(LIMITS, slippage_bps=Decimal(25), taker_fee_bps=Decimal(10))
    order = request(Side.SELL, "2")
    assert order_notional(order, QUOTES[BTC], limits) == Decimal(2) * PRICE * Decimal("1.001")


def test_a_limit_order_notional_is_its_limit_plus_the_fee() -> None:
    limits = replace(LIMITS, slippage_bps=Decimal(25), taker_fee_bps=Decimal(10))
    order = request(Side.BUY, "2", limit="99")
    assert order_notional(order, QUOTES[BTC], limits) == Decimal(2) * Decimal(99) * Decimal("1.001")


def test_the_price_band_is_measured_from_the_side_it_trades_against() -> None:
    quotes = {BTC: ReferenceQuote(Decimal(95), Decimal(100), NOW)}
    # A buy at 101 is 100 bps from the ask: inside; a sell at 96 is 105 bps from the bid.
    assert check(request(Side.BUY, "1", limit="101"), quotes=quotes).approved
    assert_denied(check(request(Side.SELL, "1", limit="96"), quotes=quotes), ReasonCode.PRICE_BAND)


# --- execution's exposure --------------------------------------------------------------------


def test_unknown_exposure_fails_closed_even_for_exits() -> None:
    decision = check(request(Side.SELL, "1", reduce_only=True), exposure=None)
    assert_denied(decision, ReasonCode.EXPOSURE_UNAVAILABLE)


# --- stale or missing portfolio -------------------------------------------------------------


def test_missing_portfolio_fails_closed() -> None:
    assert_denied(check(request(Side.BUY, "1"), portfolio=None), ReasonCode.STALE_PORTFOLIO)


def test_stale_portfolio_fails_closed_even_for_exits() -> None:
    stale = replace(HEALTHY, as_of_ms=NOW - 5_001)
    assert_denied(check(request(Side.SELL, "1"), portfolio=stale), ReasonCode.STALE_PORTFOLIO)


def test_a_portfolio_that_cannot_report_its_fill_freshness_is_stale() -> None:
    old_portfolio = replace(HEALTHY, fills=None)
    decision = check(request(Side.BUY, "1"), portfolio=old_portfolio)
    assert_denied(decision, ReasonCode.STALE_PORTFOLIO)
    assert "fills" in decision.detail


def test_a_portfolio_with_a_dead_lettered_fill_is_stale() -> None:
    lost = replace(HEALTHY, fills=FillsFreshness(booked_sequence=7, dead_letters=1))
    decision = check(request(Side.SELL, "1", reduce_only=True), portfolio=lost)
    assert_denied(decision, ReasonCode.STALE_PORTFOLIO)
    assert "dead-lettered" in decision.detail


def test_a_portfolio_with_a_gap_in_the_fill_sequence_is_stale() -> None:
    gap = replace(HEALTHY, fills=FillsFreshness(booked_sequence=7, gaps=(8,)))
    assert_denied(check(request(Side.BUY, "1"), portfolio=gap), ReasonCode.STALE_PORTFOLIO)


def test_a_portfolio_behind_executions_fills_for_longer_than_the_max_lag_is_stale() -> None:
    assert check(request(Side.BUY, "1"), fill_lag_ms=2_000).approved
    decision = check(request(Side.BUY, "1"), fill_lag_ms=2_001)
    assert_denied(decision, ReasonCode.STALE_PORTFOLIO)
    assert "behind execution" in decision.detail


def test_fill_lag_is_the_age_of_the_oldest_sequence_the_portfolio_has_not_booked() -> None:
    tracker = FillLagTracker()
    assert tracker.lag_ms(execution_sequence=3, booked_sequence=3, now_ms=0) == 0
    assert tracker.lag_ms(execution_sequence=5, booked_sequence=3, now_ms=100) == 0
    assert tracker.lag_ms(execution_sequence=6, booked_sequence=4, now_ms=900) == 800
    # Sequence 5 is booked: the lag is now that of 6, seen at 900.
    assert tracker.lag_ms(execution_sequence=9, booked_sequence=5, now_ms=1_500) == 600
    assert tracker.lag_ms(execution_sequence=9, booked_sequence=9, now_ms=1_600) == 0


def test_portfolio_exactly_at_max_age_is_fresh_enough() -> None:
    assert check(request(Side.BUY, "1"), portfolio=replace(HEALTHY, as_of_ms=NOW - 5_000)).approved


# --- max notional ---------------------------------------------------------------------------


def test_order_at_max_notional_is_approved() -> None:
    assert check(request(Side.BUY, "10"), exposure=Exposure()).approved


def test_order_above_max_notional_is_denied() -> None:
    assert_denied(check(request(Side.BUY, "10.01")), ReasonCode.MAX_NOTIONAL)


def test_limit_order_notional_uses_its_limit_price() -> None:
    assert_denied(check(request(Side.BUY, "10", limit="100.5")), ReasonCode.MAX_NOTIONAL)


# --- max position ---------------------------------------------------------------------------


def test_position_up_to_the_limit_is_approved() -> None:
    limits = replace(LIMITS, max_order_notional=Decimal(10_000))
    assert check(request(Side.BUY, "15"), limits=limits).approved


def test_audit_f3_the_second_of_two_approved_buys_breaches_the_position_limit() -> None:
    limits = replace(LIMITS, position_quantity_overrides={ETH: Decimal(1)})
    first = check(request(Side.BUY, "0.9", symbol=ETH), limits=limits, exposure=Exposure())
    assert first.approved
    in_flight = Exposure(in_flight=[InFlightOrder(ETH, Side.BUY, Decimal("0.9"))])
    second = check(request(Side.BUY, "0.9", symbol=ETH), limits=limits, exposure=in_flight)
    assert_denied(second, ReasonCode.MAX_POSITION)
    assert "1.8" in second.detail


def test_working_orders_count_on_their_side_only() -> None:
    limits = replace(LIMITS, max_order_notional=Decimal(10_000), max_gross_exposure=Decimal(10**6))
    working = Exposure(
        holdings={BTC: Decimal(5)},
        in_flight=[
            InFlightOrder(BTC, Side.BUY, Decimal(10)),
            InFlightOrder(BTC, Side.SELL, Decimal(20)),
        ],
    )
    # Worst long 5 + 10 + 5 = 20: at the limit. Worst short 5 - 20 - 5 = -20: at the limit.
    assert check(request(Side.BUY, "5"), limits=limits, exposure=working).approved
    assert check(request(Side.SELL, "5"), limits=limits, exposure=working).approved
    assert_denied(
        check(request(Side.BUY, "5.1"), limits=limits, exposure=working), ReasonCode.MAX_POSITION
    )
    assert_denied(
        check(request(Side.SELL, "5.1"), limits=limits, exposure=working), ReasonCode.MAX_POSITION
    )


def test_position_beyond_the_limit_is_denied() -> None:
    limits = replace(LIMITS, max_order_notional=Decimal(10_000))
    assert_denied(check(request(Side.BUY, "15.5"), limits=limits), ReasonCode.MAX_POSITION)


def test_short_position_limit_applies_to_absolute_size() -> None:
    limits = replace(LIMITS, max_order_notional=Decimal(10_000), max_gross_exposure=Decimal(10**6))
    assert check(request(Side.SELL, "25"), limits=limits).approved  # 5 -> -20
    assert_denied(check(request(Side.SELL, "26"), limits=limits), ReasonCode.MAX_POSITION)


def test_per_symbol_position_override_wins_over_the_global_limit() -> None:
    limits = replace(LIMITS, position_quantity_overrides={ETH: Decimal(1)})
    assert_denied(check(request(Side.BUY, "2", symbol=ETH), limits=limits), ReasonCode.MAX_POSITION)
    assert check(request(Side.BUY, "1", symbol=ETH), limits=limits).approved


# --- gross exposure -------------------------------------------------------------------------


def test_gross_exposure_within_limit_is_approved() -> None:
    exposure = Exposure(holdings={BTC: Decimal(5), ETH: Decimal(15)})  # 2 000 at the mids
    assert check(request(Side.BUY, "5", symbol=ETH), exposure=exposure).approved


def test_gross_exposure_beyond_limit_is_denied() -> None:
    exposure = Exposure(holdings={BTC: Decimal(5), ETH: Decimal(15)})
    limits = replace(LIMITS, max_gross_exposure=Decimal(2_499))
    decision = check(request(Side.BUY, "5", symbol=ETH), exposure=exposure, limits=limits)
    assert_denied(decision, ReasonCode.MAX_GROSS_EXPOSURE)


def test_gross_exposure_counts_in_flight_orders_at_risks_own_mid_prices() -> None:
    # F15: one set of prices. BTC worst case 5 + 10 = 15 at mid 200, ETH 4 at mid 100.
    quotes = {
        BTC: ReferenceQuote(Decimal(199), Decimal(201), NOW),
        ETH: ReferenceQuote(Decimal(99), Decimal(101), NOW),
    }
    exposure = Exposure(
        holdings={BTC: Decimal(5)}, in_flight=[InFlightOrder(BTC, Side.BUY, Decimal(10))]
    )
    limits = replace(LIMITS, max_gross_exposure=Decimal(3_400))
    assert check(
        request(Side.BUY, "4", symbol=ETH), quotes=quotes, exposure=exposure, limits=limits
    ).approved
    denied = check(
        request(Side.BUY, "4.1", symbol=ETH), quotes=quotes, exposure=exposure, limits=limits
    )
    assert_denied(denied, ReasonCode.MAX_GROSS_EXPOSURE)


def test_gross_exposure_needs_a_fresh_quote_for_every_symbol_it_values() -> None:
    quotes = {ETH: QUOTES[ETH], BTC: ReferenceQuote(PRICE, PRICE, NOW - 10_000)}
    decision = check(request(Side.BUY, "1", symbol=ETH), quotes=quotes)
    assert_denied(decision, ReasonCode.STALE_QUOTE)
    assert "BTCUSDT" in decision.detail


# --- price band -----------------------------------------------------------------------------


def test_limit_price_inside_the_band_is_approved() -> None:
    assert check(request(Side.BUY, "1", limit="101")).approved


def test_limit_price_outside_the_band_is_denied() -> None:
    assert_denied(check(request(Side.SELL, "1", limit="98.9")), ReasonCode.PRICE_BAND)


# --- order rate -----------------------------------------------------------------------------


def test_orders_below_the_rate_limit_are_approved() -> None:
    # The one at NOW - 60_000 has left the rolling window.
    assert check(request(Side.BUY, "1"), recent=(NOW - 60_000, NOW - 10, NOW - 5)).approved


def test_orders_at_the_rate_limit_are_denied() -> None:
    recent = (NOW - 59_999, NOW - 10, NOW - 5)
    assert_denied(check(request(Side.BUY, "1"), recent=recent), ReasonCode.ORDER_RATE)


# --- trading state --------------------------------------------------------------------------


def test_halted_denies_new_risk() -> None:
    assert_denied(check(request(Side.BUY, "1"), state=TradingState.HALTED), ReasonCode.HALTED)


def test_halted_allows_an_order_that_reduces_the_position() -> None:
    decision = check(request(Side.SELL, "5", reduce_only=True), state=TradingState.HALTED)
    assert decision.approved


def test_halted_denies_an_order_that_flips_the_position() -> None:
    assert_denied(check(request(Side.SELL, "6"), state=TradingState.HALTED), ReasonCode.HALTED)


def test_reducing_denies_new_risk() -> None:
    decision = check(request(Side.BUY, "1"), state=TradingState.REDUCING)
    assert_denied(decision, ReasonCode.REDUCING_ONLY)


def test_reducing_allows_a_partial_close() -> None:
    assert check(request(Side.SELL, "2"), state=TradingState.REDUCING).approved


def test_reduce_only_order_that_would_flip_is_invalid() -> None:
    assert_denied(check(request(Side.SELL, "6", reduce_only=True)), ReasonCode.INVALID_ORDER)


def test_reduce_only_counts_every_order_already_in_flight_on_its_side() -> None:
    exposure = Exposure(
        holdings={BTC: Decimal(5)},
        in_flight=[
            InFlightOrder(BTC, Side.SELL, Decimal(2), reduce_only=True),
            InFlightOrder(BTC, Side.SELL, Decimal(1), reduce_only=False),
            InFlightOrder(BTC, Side.BUY, Decimal(1), reduce_only=False),
        ],
    )
    assert check(request(Side.SELL, "2", reduce_only=True), exposure=exposure).approved
    decision = check(request(Side.SELL, "2.5", reduce_only=True), exposure=exposure)
    assert_denied(decision, ReasonCode.INVALID_ORDER)
    assert "after 3 in flight" in decision.detail


def test_a_non_reduce_only_order_is_reducing_only_if_it_reduces_in_the_worst_case() -> None:
    exposure = Exposure(
        holdings={BTC: Decimal(5)}, in_flight=[InFlightOrder(BTC, Side.SELL, Decimal(4))]
    )
    assert check(request(Side.SELL, "1"), exposure=exposure, state=TradingState.HALTED).approved
    decision = check(request(Side.SELL, "2"), exposure=exposure, state=TradingState.HALTED)
    assert_denied(decision, ReasonCode.HALTED)


def test_exit_larger_than_max_notional_still_passes() -> None:
    exposure = Exposure(holdings={BTC: Decimal(50)})
    assert check(request(Side.SELL, "50", reduce_only=True), exposure=exposure).approved


@pytest.mark.parametrize(
    ("side", "quantity", "position", "expected"),
    [
        (Side.SELL, "5", "5", True),
        (Side.SELL, "2", "5", True),
        (Side.SELL, "6", "5", False),
        (Side.BUY, "1", "5", False),
        (Side.BUY, "3", "-3", True),
        (Side.SELL, "1", "0", False),
    ],
)
def test_reduces_position(side: Side, quantity: str, position: str, expected: bool) -> None:
    assert reduces_position(side, Decimal(quantity), Decimal(position)) is expected


def test_reduces_position_counts_what_is_pending_on_its_side() -> None:
    assert reduces_position(Side.SELL, Decimal(2), Decimal(5), pending=Decimal(3))
    assert not reduces_position(Side.SELL, Decimal(2), Decimal(5), pending=Decimal("3.1"))


# --- loss limits ----------------------------------------------------------------------------


def test_daily_loss_within_limit_is_approved() -> None:
    portfolio = replace(HEALTHY, daily_pnl=Decimal(-499))
    assert check(request(Side.BUY, "1"), portfolio=portfolio).approved


def test_daily_loss_breach_denies_and_recommends_reducing() -> None:
    portfolio = replace(HEALTHY, daily_pnl=Decimal(-500))
    decision = check(request(Side.BUY, "1"), portfolio=portfolio)
    assert_denied(decision, ReasonCode.DAILY_LOSS)
    assert decision.recommended_state is TradingState.REDUCING


def test_drawdown_within_limit_is_approved() -> None:
    portfolio = replace(HEALTHY, equity=Decimal(8_001))
    assert check(request(Side.BUY, "1"), portfolio=portfolio).approved


def test_drawdown_breach_denies_and_recommends_halting() -> None:
    portfolio = replace(HEALTHY, equity=Decimal(8_000), daily_pnl=Decimal(-2_000))
    decision = check(request(Side.BUY, "1"), portfolio=portfolio)
    assert_denied(decision, ReasonCode.DRAWDOWN)
    assert decision.recommended_state is TradingState.HALTED


def test_exit_during_a_breach_passes_and_still_recommends_the_transition() -> None:
    portfolio = replace(HEALTHY, daily_pnl=Decimal(-600))
    decision = check(request(Side.SELL, "5"), portfolio=portfolio)
    assert decision.approved
    assert decision.recommended_state is TradingState.REDUCING


def test_no_recommendation_when_already_in_the_recommended_state() -> None:
    portfolio = replace(HEALTHY, daily_pnl=Decimal(-600))
    decision = check(request(Side.BUY, "1"), portfolio=portfolio, state=TradingState.REDUCING)
    assert_denied(decision, ReasonCode.REDUCING_ONLY)
    assert decision.recommended_state is None


# --- state machine --------------------------------------------------------------------------

ALL_PAIRS = [(a, b) for a in TradingState for b in TradingState]


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_state_transitions_follow_the_table(current: TradingState, target: TradingState) -> None:
    if target in ALLOWED_STATE_TRANSITIONS[current]:
        assert transition_state(current, target) is target
    else:
        with pytest.raises(InvalidStateTransition, match=f"from {current} to {target}"):
            transition_state(current, target)


def test_every_state_can_reach_halted_except_halted_itself() -> None:
    assert TradingState.HALTED in ALLOWED_STATE_TRANSITIONS[TradingState.ACTIVE]
    assert TradingState.HALTED in ALLOWED_STATE_TRANSITIONS[TradingState.REDUCING]
    assert TradingState.HALTED not in ALLOWED_STATE_TRANSITIONS[TradingState.HALTED]


# --- properties: no combination of fills breaks a limit ---------------------------------------

PROPERTY_LIMITS = replace(
    LIMITS,
    max_order_notional=Decimal(10**6),
    max_position_quantity=Decimal(10),
    max_gross_exposure=Decimal(1_500),
    max_orders_per_window=10**6,
    position_quantity_overrides={ETH: Decimal(4)},
)
quantities = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(12), places=1)
sides = st.sampled_from([Side.BUY, Side.SELL])
symbols = st.sampled_from([BTC, ETH])
candidates = st.lists(
    st.tuples(symbols, sides, quantities, st.booleans(), st.booleans()), max_size=8
)


def _positions(exposure: Exposure, orders: tuple[InFlightOrder, ...]) -> dict[Symbol, Decimal]:
    positions = {s: exposure.holding(s) for s in (BTC, ETH)}
    for order in orders:
        positions[order.symbol] += order.quantity * order.side.sign
    return positions


def _within(exposure: Exposure, limits: RiskLimits) -> bool:
    for size in range(len(exposure.in_flight) + 1):
        for subset in combinations(exposure.in_flight, size):
            positions = _positions(exposure, subset)
            if any(abs(q) > limits.max_position_for(s) for s, q in positions.items()):
                return False
            if (
                sum(abs(q) * QUOTES[s].mid for s, q in positions.items())
                > limits.max_gross_exposure
            ):
                return False
    return True


def _approve_all(
    exposure: Exposure, wanted: list[tuple[Symbol, Side, Decimal, bool, bool]]
) -> Exposure:
    """Check each order against what is in flight; every approval joins the in-flight set."""
    in_flight = list(exposure.in_flight)
    for n, (symbol, side, quantity, reduce_only, limit) in enumerate(wanted):
        order = OrderRequest(
            ClientOrderId(f"p-{n}"),
            symbol,
            side,
            quantity,
            OrderType.LIMIT if limit else OrderType.MARKET,
            PRICE if limit else None,
            reduce_only=reduce_only,
        )
        current = Exposure(exposure.holdings, tuple(in_flight))
        if check(order, limits=PROPERTY_LIMITS, exposure=current).approved:
            in_flight.append(InFlightOrder(symbol, side, quantity, reduce_only))
    return Exposure(exposure.holdings, tuple(in_flight))


@settings(max_examples=300, deadline=None)
@given(
    btc=st.decimals(min_value=Decimal(-6), max_value=Decimal(6), places=1),
    eth=st.decimals(min_value=Decimal(-3), max_value=Decimal(3), places=1),
    working=st.lists(st.tuples(symbols, sides, quantities), max_size=3),
    wanted=candidates,
)
def test_no_combination_of_approvals_and_working_orders_can_exceed_a_limit(
    btc: Decimal,
    eth: Decimal,
    working: list[tuple[Symbol, Side, Decimal]],
    wanted: list[tuple[Symbol, Side, Decimal, bool, bool]],
) -> None:
    start = Exposure(
        holdings={BTC: btc, ETH: eth},
        in_flight=tuple(InFlightOrder(s, side, q) for s, side, q in working),
    )
    if not _within(start, PROPERTY_LIMITS):
        return  # limits already broken before any approval: nothing to prove
    assert _within(_approve_all(start, wanted), PROPERTY_LIMITS)


@settings(max_examples=300, deadline=None)
@given(
    held=st.decimals(min_value=Decimal(-6), max_value=Decimal(6), places=1),
    wanted=st.lists(st.tuples(sides, quantities), max_size=8),
)
def test_reduce_only_approvals_can_never_increase_or_flip_a_position(
    held: Decimal, wanted: list[tuple[Side, Decimal]]
) -> None:
    start = Exposure(holdings={BTC: held})
    done = _approve_all(start, [(BTC, side, q, True, False) for side, q in wanted])
    low, high = min(held, Decimal(0)), max(held, Decimal(0))
    for size in range(len(done.in_flight) + 1):
        for subset in combinations(done.in_flight, size):
            assert low <= _positions(done, subset)[BTC] <= high
