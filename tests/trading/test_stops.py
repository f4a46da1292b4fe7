from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.stops import (
    ExitConfig,
    ExitReason,
    Offset,
    OpenPosition,
    PriceSource,
    TrailingState,
    evaluate_exits,
    exit_client_order_id,
)
from backend.trading.types import ClientOrderId, OrderType, Quote, Side
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
    assert state == TrailingState(D(110), True, D("107.8"))
    result = evaluate_exits(LONG, config, quote("107.8", "108"), state)
    assert result.exit is not None and result.exit.reason is ExitReason.TRAILING_STOP
    assert result.exit.trigger_price == D("107.8")


def test_trailing_stop_arms_only_after_the_activation_profit() -> None:
    config = ExitConfig(
        trailing_stop=Offset.percent(D(1)), trailing_activation=Offset.percent(D(2))
    )
    early = evaluate_exits(LONG, config, quote("101", "101.5"))
    assert early.state == TrailingState(D(101), False, None)
    # 1% below the best price, but the trail is not armed yet.
    assert evaluate_exits(LONG, config, quote("99.9", "100"), early.state).exit is None
    armed = evaluate_exits(LONG, config, quote("102", "102.5"), early.state)
    assert armed.state == TrailingState(D(102), True, D("100.98"))
    result = evaluate_exits(LONG, config, quote("100.9", "101"), armed.state)
    assert result.exit is not None and result.exit.reason is ExitReason.TRAILING_STOP


def test_short_trailing_stop_ratchets_down() -> None:
    config = ExitConfig(trailing_stop=Offset.absolute(D(2)))
    state = evaluate_exits(SHORT, config, quote("89", "90")).state
    assert state == TrailingState(D(90), True, D(92))
    state = evaluate_exits(SHORT, config, quote("90", "91"), state).state
    assert state == TrailingState(D(90), True, D(92))
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


def test_each_rule_is_judged_at_its_own_price_source() -> None:
    # bid 97.9, ask 98.3, last 98.5, mid 98.1: the stop at 98 is crossed by the bid only.
    tick = Quote(BTC, D("97.9"), D("98.3"), D("98.5"), D(10), 1)
    stop = Offset.percent(D(2))
    at_bid = ExitConfig(stop_loss=stop)
    assert evaluate_exits(LONG, at_bid, tick).exit is not None
    for source in (PriceSource.LAST, PriceSource.MARK):
        config = ExitConfig(stop_loss=stop, stop_loss_price=source)
        assert evaluate_exits(LONG, config, tick).exit is None, source
    crossed = Quote(BTC, D("97.7"), D("98.1"), D("99"), D(10), 2)
    result = evaluate_exits(
        LONG, ExitConfig(stop_loss=stop, stop_loss_price=PriceSource.MARK), crossed
    )
    assert result.exit is not None and result.exit.observed_price == D("97.9")


def test_a_short_is_judged_at_the_ask_and_its_mark_at_the_mid() -> None:
    tick = Quote(BTC, D("101"), D("103"), D("101.5"), D(10), 1)
    assert PriceSource.BID_ASK.price(tick, -1) == D(103)
    assert PriceSource.BID_ASK.price(tick, 1) == D(101)
    assert PriceSource.MARK.price(tick, -1) == D(102)
    assert PriceSource.LAST.price(tick, -1) == D("101.5")


def test_the_time_limit_closes_the_position_once_it_is_reached() -> None:
    opened = OpenPosition(BTC, D(2), D(100), opened_ms=1_000)
    config = ExitConfig(time_limit_ms=60_000)
    calm = quote("100", "100.1")
    assert evaluate_exits(opened, config, calm, now_ms=60_999).exit is None
    assert evaluate_exits(opened, config, calm).exit is None, "no clock, no time limit"
    result = evaluate_exits(opened, config, calm, now_ms=61_000)
    assert result.exit is not None and result.exit.reason is ExitReason.TIME_LIMIT
    assert (result.exit.side, result.exit.observed_price) == (Side.SELL, D(100))


def test_a_price_exit_wins_over_the_time_limit() -> None:
    opened = OpenPosition(BTC, D(2), D(100), opened_ms=0)
    config = ExitConfig(stop_loss=Offset.percent(D(1)), time_limit_ms=10)
    result = evaluate_exits(opened, config, quote("90", "91"), now_ms=10_000)
    assert result.exit is not None and result.exit.reason is ExitReason.STOP_LOSS


def test_a_wider_trailing_offset_never_loosens_the_level_already_reached() -> None:
    tight = ExitConfig(trailing_stop=Offset.percent(D(1)))
    state = evaluate_exits(LONG, tight, quote("110", "111")).state
    assert state is not None and state.level == D("108.9")
    wide = ExitConfig(trailing_stop=Offset.percent(D(10)))
    after = evaluate_exits(LONG, wide, quote("109", "110"), state)
    assert after.state is not None and after.state.level == D("108.9")
    result = evaluate_exits(LONG, wide, quote("108.9", "109"), after.state)
    assert result.exit is not None and result.exit.trigger_price == D("108.9")


def test_exit_client_order_ids_are_derived_from_position_trigger_and_stage() -> None:
    first = exit_client_order_id("BTCUSDT-17", ExitReason.TRAILING_STOP)
    assert first == "pm-BTCUSDT-17-TS"
    assert exit_client_order_id("BTCUSDT-17", ExitReason.TRAILING_STOP) == first
    assert exit_client_order_id("BTCUSDT-17", ExitReason.TRAILING_STOP, emergency=True) == (
        "pm-BTCUSDT-17-TS-EM"
    )
    assert (
        exit_client_order_id("BTCUSDT-17", ExitReason.STOP_LOSS, round_=2) == "pm-BTCUSDT-17-SL-r2"
    )
    long_id = exit_client_order_id("X" * 60 + "-1", ExitReason.TIME_LIMIT, emergency=True)
    assert len(long_id) <= 64 and long_id.startswith("pm-") and long_id.endswith("-TL-EM")
    assert long_id == exit_client_order_id("X" * 60 + "-1", ExitReason.TIME_LIMIT, emergency=True)


prices = st.decimals(min_value=50, max_value=150, places=2)
offsets = st.builds(
    lambda pct, absolute, use_pct: Offset.percent(pct) if use_pct else Offset.absolute(absolute),
    st.decimals(min_value="0.1", max_value=20, places=1),
    st.decimals(min_value="0.1", max_value=20, places=1),
    st.booleans(),
)
sources = st.sampled_from(list(PriceSource))


def path_quote(price: Decimal, spread: Decimal, last_shift: Decimal, ts_ms: int) -> Quote:
    return Quote(BTC, price, price + spread, price + last_shift, D(10), ts_ms)


steps = st.lists(
    st.tuples(
        prices,
        st.decimals(min_value=0, max_value=2, places=2),
        st.decimals(min_value=-1, max_value=1, places=2),
        offsets,
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps, sources, st.booleans())
def test_the_trailing_level_only_ever_moves_in_the_positions_favour(
    path: list[tuple[Decimal, Decimal, Decimal, Offset]], source: PriceSource, long: bool
) -> None:
    # Every step may change the trailing offset too, as an operator may over HTTP.
    position = LONG if long else SHORT
    direction = 1 if long else -1
    state: TrailingState | None = None
    levels: list[Decimal] = []
    for ts, (price, spread, shift, offset) in enumerate(path):
        if price + shift <= 0:
            continue
        config = ExitConfig(trailing_stop=offset, trailing_price=source)
        tick = path_quote(price, spread, shift, ts)
        result = evaluate_exits(position, config, tick, state)
        assert result.state is not None and result.state.level is not None
        if levels:
            assert (result.state.level - levels[-1]) * direction >= 0
        levels.append(result.state.level)
        observed = source.price(tick, direction)
        if result.exit is not None:
            assert result.exit.reason is ExitReason.TRAILING_STOP
            assert (observed - result.state.level) * direction <= 0
            assert result.exit.trigger_price == result.state.level
            assert result.exit.quantity == abs(position.quantity) and result.exit.reduce_only
        else:
            assert (observed - result.state.level) * direction > 0
        state = result.state


def stored(state: TrailingState | None) -> TrailingState | None:
    """The state as a restart reads it back: every decimal through its text."""
    if state is None:
        return None
    level = None if state.level is None else D(str(state.level))
    return TrailingState(D(str(state.best_price)), state.active, level)


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(min_value=0, max_value=40), offsets, st.booleans())
def test_a_restart_anywhere_on_the_path_changes_nothing(
    path: list[tuple[Decimal, Decimal, Decimal, Offset]],
    restart_at: int,
    offset: Offset,
    long: bool,
) -> None:
    position = LONG if long else SHORT
    config = ExitConfig(trailing_stop=offset, trailing_activation=Offset.percent(D(1)))
    ticks = [
        path_quote(price, spread, shift, ts)
        for ts, (price, spread, shift, _) in enumerate(path)
        if price + shift > 0
    ]
    straight: TrailingState | None = None
    restarted: TrailingState | None = None
    for index, tick in enumerate(ticks):
        one = evaluate_exits(position, config, tick, straight)
        if index == restart_at:
            restarted = stored(restarted)
        two = evaluate_exits(position, config, tick, restarted)
        assert one == two
        # A redelivered tick (handled again after a crash before its acknowledgement) leaves
        # the state where the first delivery put it, and decides the same exit.
        again = evaluate_exits(position, config, tick, one.state)
        assert again == one
        straight, restarted = one.state, two.state
