from dataclasses import replace
from decimal import Decimal

import pytest

from backend.trading.risk import (
    ALLOWED_STATE_TRANSITIONS,
    InvalidStateTransition,
    PortfolioSnapshot,
    ReasonCode,
    RiskDecision,
    RiskLimits,
    TradingState,
    check_order,
    reduces_position,
    transition_state,
)
from backend.trading.types import OrderRequest, OrderType, Side
from tests.trading.factories import BTC, ETH, request

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
)
HEALTHY = PortfolioSnapshot(
    as_of_ms=NOW - 1_000,
    equity=Decimal(10_000),
    peak_equity=Decimal(10_000),
    daily_pnl=Decimal(0),
    gross_exposure=Decimal(1_000),
    positions={BTC: Decimal(5)},
)


def check(
    order: OrderRequest,
    portfolio: PortfolioSnapshot | None = HEALTHY,
    state: TradingState = TradingState.ACTIVE,
    recent: tuple[int, ...] = (),
    limits: RiskLimits = LIMITS,
    reference_price: Decimal | None = PRICE,
) -> RiskDecision:
    return check_order(
        order, portfolio, state, recent, NOW, limits, reference_price=reference_price
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


def test_missing_reference_price_fails_closed() -> None:
    assert_denied(
        check(request(Side.BUY, "1"), reference_price=None), ReasonCode.NO_REFERENCE_PRICE
    )


# --- stale or missing portfolio -------------------------------------------------------------


def test_missing_portfolio_fails_closed() -> None:
    assert_denied(check(request(Side.BUY, "1"), portfolio=None), ReasonCode.STALE_PORTFOLIO)


def test_stale_portfolio_fails_closed_even_for_exits() -> None:
    stale = replace(HEALTHY, as_of_ms=NOW - 5_001)
    assert_denied(check(request(Side.SELL, "1"), portfolio=stale), ReasonCode.STALE_PORTFOLIO)


def test_portfolio_exactly_at_max_age_is_fresh_enough() -> None:
    assert check(request(Side.BUY, "1"), portfolio=replace(HEALTHY, as_of_ms=NOW - 5_000)).approved


# --- max notional ---------------------------------------------------------------------------


def test_order_at_max_notional_is_approved() -> None:
    assert check(request(Side.BUY, "10")).approved


def test_order_above_max_notional_is_denied() -> None:
    assert_denied(check(request(Side.BUY, "10.01")), ReasonCode.MAX_NOTIONAL)


def test_limit_order_notional_uses_its_limit_price() -> None:
    assert_denied(check(request(Side.BUY, "10", limit="100.5")), ReasonCode.MAX_NOTIONAL)


# --- max position ---------------------------------------------------------------------------


def test_position_up_to_the_limit_is_approved() -> None:
    limits = replace(LIMITS, max_order_notional=Decimal(10_000))
    assert check(request(Side.BUY, "15"), limits=limits).approved


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
    portfolio = replace(HEALTHY, gross_exposure=Decimal(4_000))
    assert check(request(Side.BUY, "5", symbol=ETH), portfolio=portfolio).approved


def test_gross_exposure_beyond_limit_is_denied() -> None:
    portfolio = replace(HEALTHY, gross_exposure=Decimal(4_600))
    decision = check(request(Side.BUY, "5", symbol=ETH), portfolio=portfolio)
    assert_denied(decision, ReasonCode.MAX_GROSS_EXPOSURE)


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


def test_exit_larger_than_max_notional_still_passes() -> None:
    portfolio = replace(HEALTHY, positions={BTC: Decimal(50)})
    assert check(request(Side.SELL, "50", reduce_only=True), portfolio=portfolio).approved


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
