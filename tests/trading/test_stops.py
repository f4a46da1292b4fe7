from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.stops import (
    ExitConfig,
    ExitReason,
    Offset,
    OpenPosition,
    TrailingState,
    evaluate_exits,
)
from backend.trading.types import ClientOrderId, OrderType, Side
from tests.support.factories import BTC, quote

D = Decimal
LONG = OpenPosition(BTC, D(2), D(100))
SHORT = OpenPosition(BTC, D(-3), D(100))
BRACKET = ExitConfig(stop_loss=Offset.percent(D(2)), take_profit=Offset.percent(D(4)))


def test_long_stop_loss_triggers_on_the_bid_and_closes_the_whole_position() -> None:
    result = evaluate_exits(LONG, BRACKET, quote("98", "98.5", ts_ms=7))
    assert result.exit is not None
    assert (result.exit.reason, result.exit.side, result.exit.quantity) == (
        ExitReason.STOP_LOSS,
        Side.SELL,
        D(2),
    )
    assert result.exit.reduce_only
    assert (result.exit.trigger_price, result.exit.observed_price, result.exit.ts_ms) == (
        D(98),
        D(98),
        7,
    )


def test_long_stop_loss_does_not_trigger_above_the_level() -> None:
    assert evaluate_exits(LONG, BRACKET, quote("98.01", "98.5")).exit is None


def test_long_take_profit_triggers_at_the_target() -> None:
    result = evaluate_exits(LONG, BRACKET, quote("104", "104.5"))
    assert result.exit is not None and result.exit.reason is ExitReason.TAKE_PROFIT


def test_short_exits_are_checked_against_the_ask() -> None:
    stop = evaluate_exits(SHORT, BRACKET, quote("101.5", "102"))
    assert stop.exit is not None and stop.exit.reason is ExitReason.STOP_LOSS
    assert (stop.exit.side, stop.exit.quantity) == (Side.BUY, D(3))
    assert evaluate_exits(SHORT, BRACKET, quote("101.5", "101.9")).exit is None
    profit = evaluate_exits(SHORT, BRACKET, quote("95.5", "96"))
    assert profit.exit is not None and profit.exit.reason is ExitReason.TAKE_PROFIT


def test_absolute_offsets() -> None:
    config = ExitConfig(stop_loss=Offset.absolute(D(5)), take_profit=Offset.absolute(D(10)))
    assert evaluate_exits(LONG, config, quote("96", "97")).exit is None
    result = evaluate_exits(LONG, config, quote("95", "96"))
    assert result.exit is not None and result.exit.trigger_price == D(95)


def test_trailing_stop_follows_the_best_price_and_triggers_on_the_pullback() -> None:
    config = ExitConfig(trailing_stop=Offset.percent(D(2)))
    state = None
    for bid in ("101", "110", "108.5"):
        result = evaluate_exits(LONG, config, quote(bid, "111"), state)
        assert result.exit is None
        state = result.state
    assert state == TrailingState(D(110), True)
    result = evaluate_exits(LONG, config, quote("107.8", "108"), state)
    assert result.exit is not None and result.exit.reason is ExitReason.TRAILING_STOP
    assert result.exit.trigger_price == D("107.8")


def test_trailing_stop_arms_only_after_the_activation_profit() -> None:
    config = ExitConfig(
        trailing_stop=Offset.percent(D(1)), trailing_activation=Offset.percent(D(2))
    )
    early = evaluate_exits(LONG, config, quote("101", "101.5"))
    assert early.state == TrailingState(D(101), False)
    # 1% below the best price, but the trail is not armed yet.
    assert evaluate_exits(LONG, config, quote("99.9", "100"), early.state).exit is None
    armed = evaluate_exits(LONG, config, quote("102", "102.5"), early.state)
    assert armed.state == TrailingState(D(102), True)
    result = evaluate_exits(LONG, config, quote("100.9", "101"), armed.state)
    assert result.exit is not None and result.exit.reason is ExitReason.TRAILING_STOP


def test_short_trailing_stop_ratchets_down() -> None:
    config = ExitConfig(trailing_stop=Offset.absolute(D(2)))
    state = evaluate_exits(SHORT, config, quote("89", "90")).state
    assert state == TrailingState(D(90), True)
    state = evaluate_exits(SHORT, config, quote("90", "91"), state).state
    assert state == TrailingState(D(90), True)
    result = evaluate_exits(SHORT, config, quote("91", "92"), state)
    assert result.exit is not None and result.exit.side is Side.BUY


def test_stop_loss_wins_when_several_exits_trigger_together() -> None:
    config = ExitConfig(stop_loss=Offset.percent(D(1)), trailing_stop=Offset.percent(D(1)))
    state = TrailingState(D(120), True)
    result = evaluate_exits(LONG, config, quote("90", "91"), state)
    assert result.exit is not None and result.exit.reason is ExitReason.STOP_LOSS


def test_no_exit_without_rules_or_without_a_position() -> None:
    assert evaluate_exits(LONG, ExitConfig(), quote("1", "2")).exit is None
    flat = OpenPosition(BTC, D(0), D(100))
    assert evaluate_exits(flat, BRACKET, quote("1", "2")).exit is None


def test_exit_becomes_a_reduce_only_market_order() -> None:
    result = evaluate_exits(LONG, BRACKET, quote("90", "91"))
    assert result.exit is not None
    order = result.exit.to_order_request(ClientOrderId("qt-exit"))
    assert order.reduce_only and order.order_type is OrderType.MARKET
    assert (order.side, order.quantity, order.symbol) == (Side.SELL, D(2), BTC)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.decimals(min_value=50, max_value=150, places=2), min_size=1, max_size=40))
def test_long_trailing_level_never_loosens(bids: list[Decimal]) -> None:
    config = ExitConfig(trailing_stop=Offset.percent(D(3)))
    state: TrailingState | None = None
    best_seen: list[Decimal] = []
    for bid in bids:
        result = evaluate_exits(LONG, config, quote(str(bid), str(bid + 1)), state)
        assert result.state is not None
        best_seen.append(result.state.best_price)
        if result.exit is not None:
            assert bid <= result.state.best_price * D("0.97")
        state = result.state
    assert best_seen == sorted(best_seen)
    assert best_seen[-1] == max(bids)
