"""The paper venue never fills worse than the market: limits, market remainders, volume, rules."""

from __future__ import annotations

from decimal import Decimal

from backend.trading.instruments import parse_instruments
from backend.trading.orders import Order, OrderStatus
from backend.trading.types import ClientOrderId, Liquidity, OrderType, Side, Symbol, TimeInForce
from backend.trading.venue import PaperVenue, VenueConfig, WorkingOrder
from tests.support.factories import BTC, quote, request

SOL = Symbol("SOLUSDT")
D = Decimal


def venue(cash: str = "1000000", *, holdings: str = "0", impact_bps: str = "50") -> PaperVenue:
    return PaperVenue(
        cash=D(cash),
        holdings={BTC: D(holdings)},
        config=VenueConfig(impact_bps=D(impact_bps), touch_fill_probability=1.0),
    )


# 7. Limit orders fill at their limit or better ---------------------------------------------


def test_a_resting_buy_the_market_gaps_through_fills_at_the_ask_not_its_limit() -> None:
    v = venue()
    v.on_quote(quote("100.00", "100.10", volume="10", ts_ms=1))
    v.submit(request(Side.BUY, "1", limit="99.00"), now_ms=1)
    (report,) = v.on_quote(quote("89.90", "90.00", volume="10", ts_ms=2))
    (fill,) = report.fills
    assert (fill.price, fill.liquidity) == (D("90.00"), Liquidity.MAKER)
    assert fill.fee == D("90.00") * D("0.0002")


def test_a_resting_sell_the_market_gaps_through_fills_at_the_bid_not_its_limit() -> None:
    v = venue(holdings="1")
    v.on_quote(quote("89.90", "90.00", volume="10", ts_ms=1))
    v.submit(request(Side.SELL, "1", limit="90.00"), now_ms=1)
    (report,) = v.on_quote(quote("90.01", "90.05", volume="10", ts_ms=2))
    assert (report.fills[0].price, report.fills[0].liquidity) == (D("90.01"), Liquidity.MAKER)


def test_the_remainder_of_a_marketable_limit_stays_a_taker_at_the_touch() -> None:
    v = venue()
    v.on_quote(quote("99.90", "100.00", volume="1", ts_ms=1))
    first = v.submit(request(Side.BUY, "2", limit="104.00"), now_ms=1)
    assert [(f.quantity, f.price, f.liquidity) for f in first.fills] == [
        (1, D("100.25"), Liquidity.TAKER)
    ]
    # The market has not moved: the rest takes the ask with capped slippage, not its limit.
    (later,) = v.on_quote(quote("99.90", "100.00", volume="1", ts_ms=2))
    (fill,) = later.fills
    assert (fill.price, fill.liquidity) == (D("100.25"), Liquidity.TAKER)
    assert fill.fee == D("100.25") * D("0.001")
    assert later.order.status is OrderStatus.FILLED


def test_a_marketable_remainder_fills_at_a_lower_ask_when_the_market_falls() -> None:
    v = venue(impact_bps="0")
    v.on_quote(quote("99.90", "100.00", volume="1", ts_ms=1))
    v.submit(request(Side.BUY, "2", limit="104.00"), now_ms=1)
    (later,) = v.on_quote(quote("94.90", "95.00", volume="1", ts_ms=2))
    assert (later.fills[0].price, later.fills[0].liquidity) == (D("95.00"), Liquidity.TAKER)


# 8. A market order never rests --------------------------------------------------------------


def test_a_market_buy_larger_than_the_touch_fills_the_touch_and_cancels_the_rest() -> None:
    v = venue("301.06")
    v.on_quote(quote("99.99", "100", volume="1", ts_ms=1))
    report = v.submit(request(Side.BUY, "3"), now_ms=1)
    assert [f.quantity for f in report.fills] == [1]
    assert report.order.status is OrderStatus.CANCELED
    assert "market orders never rest" in report.events[-1].reason
    assert v.reserved_cash == 0 and v.open_orders() == []
    # The price jumps 50 %: nothing of the order is left to fill at it.
    assert v.on_quote(quote("149.99", "150", volume="1", ts_ms=2)) == []
    assert v.available_cash >= 0
    assert v.holding(BTC) == 1


def test_a_gtc_market_sell_is_immediate_or_cancel_too() -> None:
    v = venue(holdings="5")
    v.on_quote(quote("100", "101", volume="2", ts_ms=1))
    report = v.submit(request(Side.SELL, "5", tif=TimeInForce.GTC), now_ms=1)
    assert report.order.status is OrderStatus.CANCELED
    assert report.order.filled_quantity == 2
    assert v.available_quantity(BTC) == 3


def test_a_market_order_restored_open_from_older_data_is_canceled_on_the_next_quote() -> None:
    legacy = Order(
        ClientOrderId("old-m"),
        BTC,
        Side.BUY,
        OrderType.MARKET,
        D(3),
        None,
        TimeInForce.GTC,
        False,
        OrderStatus.PARTIALLY_FILLED,
        D(1),
        D(100),
        1,
        1,
        2,
    )
    v = PaperVenue.restore(
        initial_cash=D(1000), fills=[], open_orders=[WorkingOrder(legacy, D("200.7"))]
    )
    (report,) = v.on_quote(quote("149.99", "150", volume="5", ts_ms=2))
    assert report.fills == ()
    assert report.order.status is OrderStatus.CANCELED
    assert v.reserved_cash == 0 and v.cash == 1000


# 9. Instrument rules at the venue --------------------------------------------------------------


def test_a_quantity_off_the_lot_is_rejected_naming_the_rule() -> None:
    v = venue()
    v.on_quote(quote("100", "101", ts_ms=1))
    report = v.submit(request(Side.BUY, "0.0123456789"), now_ms=1)
    assert report.order.status is OrderStatus.REJECTED
    assert report.reason == (
        "quantity 0.0123456789 is not a multiple of lot size 0.0001 for BTCUSDT"
    )


def test_an_unknown_symbol_is_rejected() -> None:
    v = venue()
    v.on_quote(quote("1", "1.1", ts_ms=1, symbol=Symbol("DOGEUSDT")))
    report = v.submit(request(Side.BUY, "1", symbol=Symbol("DOGEUSDT")), now_ms=1)
    assert report.order.status is OrderStatus.REJECTED
    assert report.reason.startswith("unknown symbol DOGEUSDT")


def test_a_limit_price_off_the_tick_is_rejected() -> None:
    report = venue().submit(request(Side.BUY, "1", limit="99.005"), now_ms=1)
    assert report.order.status is OrderStatus.REJECTED
    assert report.reason == "limit price 99.005 is not a multiple of tick size 0.01 for BTCUSDT"


def test_sol_fills_on_its_own_tick_at_the_touch_when_there_is_no_impact() -> None:
    v = PaperVenue(cash=D(10_000), holdings={SOL: D(5)}, config=VenueConfig(impact_bps=D(0)))
    v.on_quote(quote("100.011", "100.012", volume="300", ts_ms=1, symbol=SOL))
    (buy,) = v.submit(request(Side.BUY, "1", symbol=SOL, cid="b"), now_ms=1).fills
    (sell,) = v.submit(request(Side.SELL, "1", symbol=SOL, cid="s"), now_ms=1).fills
    assert (buy.price, sell.price) == (D("100.012"), D("100.011"))


def test_a_buy_of_all_available_cash_fills_because_the_reservation_is_the_rounded_worst() -> None:
    # The worst price is the capped slippage rounded up to the tick: 100.013 * 1.0025 -> 100.264.
    worst = D("100.264")
    cash = worst + (worst * D("0.001")).quantize(D("1e-8"))
    v = PaperVenue(cash=cash)
    v.on_quote(quote("100.012", "100.013", volume="1", ts_ms=1, symbol=SOL))
    report = v.submit(request(Side.BUY, "1", symbol=SOL), now_ms=1)
    assert report.order.status is OrderStatus.FILLED
    assert v.cash >= 0 and v.available_cash >= 0


def test_fees_are_rounded_up_to_the_quote_precision_and_never_add_up_to_more_than_one_unit() -> (
    None
):
    v = venue()
    v.on_quote(quote("100.00", "100.01", volume="0.0003", ts_ms=1))
    fills = list(v.submit(request(Side.BUY, "0.0009", limit="100.01"), now_ms=1).fills)
    for ts in (2, 3):
        for report in v.on_quote(quote("100.00", "100.01", volume="0.0003", ts_ms=ts)):
            fills.extend(report.fills)
    exact = sum((f.quantity * f.price * D("0.001") for f in fills), D(0))
    charged = sum((f.fee for f in fills), D(0))
    assert all(f.fee.as_tuple().exponent >= -8 for f in fills)
    assert exact <= charged < exact + D("1e-8")


def test_instruments_are_configurable_per_symbol() -> None:
    instruments = parse_instruments('{"BTCUSDT": {"tick_size": "0.5", "lot_size": "0.01"}}')
    v = PaperVenue(cash=D(100_000), config=VenueConfig(instruments=instruments))
    v.on_quote(quote("100", "100.5", ts_ms=1))
    assert v.submit(request(Side.BUY, "0.001", cid="a"), now_ms=1).order.status is (
        OrderStatus.REJECTED
    )
    (fill,) = v.submit(request(Side.BUY, "0.01", cid="b"), now_ms=1).fills
    assert fill.price % D("0.5") == 0


# 10. One volume pool per side; slippage goes deeper ----------------------------------------


def test_buys_and_sells_on_one_quote_each_have_the_quote_volume() -> None:
    v = venue(holdings="2")
    v.on_quote(quote("100", "101", volume="2", ts_ms=1))
    bought = v.submit(request(Side.BUY, "2", cid="b"), now_ms=1)
    sold = v.submit(request(Side.SELL, "2", cid="s"), now_ms=1)
    assert bought.order.filled_quantity == 2
    assert sold.order.filled_quantity == 2


def test_a_second_order_on_the_same_quote_goes_deeper_into_the_book() -> None:
    v = venue()
    v.on_quote(quote("100", "101", volume="10", ts_ms=1))
    (first,) = v.submit(request(Side.BUY, "1", cid="a"), now_ms=1).fills
    (second,) = v.submit(request(Side.BUY, "1", cid="b"), now_ms=1).fills
    assert first.price == D("101.06")  # depth 1 of 10: 5 bps
    assert second.price == D("101.11")  # depth 2 of 10: 10 bps
    # A new quote is a fresh book.
    v.on_quote(quote("100", "101", volume="10", ts_ms=2))
    (third,) = v.submit(request(Side.BUY, "1", cid="c"), now_ms=2).fills
    assert third.price == D("101.06")


# 4. Reduce-only really reduces --------------------------------------------------------------


def test_a_reduce_only_buy_is_rejected_on_a_spot_venue() -> None:
    v = venue()
    v.on_quote(quote("100", "101", ts_ms=1))
    report = v.submit(request(Side.BUY, "1", reduce_only=True), now_ms=1)
    assert report.order.status is OrderStatus.REJECTED
    assert "no short position" in report.reason
    assert v.holding(BTC) == 0


def test_reduce_only_sells_together_never_exceed_the_uncommitted_position() -> None:
    v = venue(holdings="3")
    v.on_quote(quote("100", "101", ts_ms=1))
    assert v.submit(request(Side.SELL, "1", limit="120", cid="plain"), now_ms=1).order.status is (
        OrderStatus.ACCEPTED
    )
    first = v.submit(request(Side.SELL, "1.5", limit="120", cid="r1", reduce_only=True), now_ms=1)
    assert first.order.status is OrderStatus.ACCEPTED
    second = v.submit(request(Side.SELL, "1", limit="120", cid="r2", reduce_only=True), now_ms=1)
    assert second.order.status is OrderStatus.REJECTED
    assert second.reason == (
        "reduce-only SELL of 1 BTCUSDT exceeds the position not committed to other sells: "
        "0.5 (holding 3, 2.5 in working sells)"
    )
    assert v.available_quantity(BTC) == D("0.5")


def test_a_reduce_only_order_below_the_minimums_still_closes_a_small_position() -> None:
    v = venue(holdings="0.0001")
    v.on_quote(quote("100", "101", ts_ms=1))
    assert v.submit(request(Side.SELL, "0.0001", cid="plain"), now_ms=1).order.status is (
        OrderStatus.REJECTED
    )  # 0.01 USDT is below the minimum notional of 5
    closing = v.submit(request(Side.SELL, "0.0001", cid="exit", reduce_only=True), now_ms=1)
    assert closing.order.status is OrderStatus.FILLED
    assert v.holding(BTC) == 0
