from decimal import Decimal

import pytest

from backend.trading.orders import InvalidTransition, OrderStatus
from backend.trading.portfolio import Portfolio
from backend.trading.types import ClientOrderId, Fill, Liquidity, Side, TimeInForce
from backend.trading.venue import PaperVenue, UnknownOrder, VenueConfig, WorkingOrder
from tests.support.factories import BTC, ETH, quote, request

CASH = Decimal(10_000)


def venue(*, holdings: str = "0", seed: int = 0, touch_fill_probability: float = 0.5) -> PaperVenue:
    v = PaperVenue(
        cash=CASH,
        holdings={BTC: Decimal(holdings)},
        config=VenueConfig(touch_fill_probability=touch_fill_probability),
        seed=seed,
    )
    v.on_quote(quote("100", "101", volume="10", ts_ms=1_000))
    return v


def test_market_buy_fills_at_the_ask_plus_size_slippage_with_taker_fee() -> None:
    v = venue()
    report = v.submit(request(Side.BUY, "1"), now_ms=1_500)
    (fill,) = report.fills
    # 1 of 10 available: 50 bps * 0.1 = 5 bps over 101, rounded up to the cent.
    assert fill.price == Decimal("101.06")
    assert fill.fee == Decimal("101.06") * Decimal("0.001")
    assert fill.liquidity is Liquidity.TAKER
    assert (fill.quantity, fill.side, fill.ts_ms) == (Decimal(1), Side.BUY, 1_500)
    assert report.order.status is OrderStatus.FILLED
    assert v.cash == CASH - fill.price - fill.fee
    assert v.holding(BTC) == 1
    assert v.reserved_cash == 0


def test_slippage_is_capped() -> None:
    (fill,) = venue().submit(request(Side.BUY, "8"), now_ms=1_500).fills
    assert fill.price == Decimal("101.26")  # 25 bps cap, not 40 bps


def test_market_sell_fills_at_the_bid_minus_slippage() -> None:
    (fill,) = venue(holdings="2").submit(request(Side.SELL, "1"), now_ms=1_500).fills
    assert fill.price == Decimal("99.95")  # 100 * (1 - 0.0005), rounded down


def test_a_limit_fill_is_limited_by_quote_volume_and_the_rest_fills_on_later_quotes() -> None:
    v = venue()
    report = v.submit(request(Side.BUY, "15", limit="102"), now_ms=1_500)
    assert [f.quantity for f in report.fills] == [Decimal(10)]
    assert report.order.status is OrderStatus.PARTIALLY_FILLED
    (later,) = v.on_quote(quote("100", "102", volume="10", ts_ms=2_000))
    assert [f.quantity for f in later.fills] == [Decimal(5)]
    assert later.order.status is OrderStatus.FILLED
    assert [f.fill_id for f in (*report.fills, *later.fills)] == ["qt-1-1", "qt-1-2"]


def test_orders_on_one_quote_share_its_volume_in_arrival_order() -> None:
    v = venue()
    v.submit(request(Side.BUY, "95", limit="99", cid="a"), now_ms=1_100)
    v.submit(request(Side.BUY, "3", limit="99", cid="b"), now_ms=1_200)
    reports = v.on_quote(quote("97", "98", volume="96", ts_ms=2_000))
    assert [(r.order.client_order_id, r.fills[0].quantity, r.fills[0].price) for r in reports] == [
        ("a", Decimal(95), Decimal(98)),
        ("b", Decimal(1), Decimal(98)),
    ]


def test_limit_order_rests_until_crossed_then_fills_as_maker_at_the_better_ask() -> None:
    v = venue()
    report = v.submit(request(Side.BUY, "2", limit="99"), now_ms=1_500)
    assert report.fills == () and report.order.status is OrderStatus.ACCEPTED
    assert v.on_quote(quote("99.5", "100", ts_ms=2_000)) == []
    (crossed,) = v.on_quote(quote("98", "98.5", ts_ms=3_000))
    (fill,) = crossed.fills
    assert (fill.price, fill.liquidity, fill.ts_ms) == (Decimal("98.5"), Liquidity.MAKER, 3_000)
    assert fill.fee == Decimal(197) * Decimal("0.0002")


def test_limit_sell_rests_until_the_bid_rises_through_it_and_fills_at_the_bid() -> None:
    v = venue(holdings="1")
    v.submit(request(Side.SELL, "1", limit="102"), now_ms=1_500)
    (report,) = v.on_quote(quote("102.5", "103", ts_ms=2_000))
    assert report.fills[0].price == Decimal("102.5")
    assert report.fills[0].liquidity is Liquidity.MAKER


def test_marketable_limit_order_takes_at_no_worse_than_its_limit() -> None:
    (fill,) = venue().submit(request(Side.BUY, "8", limit="101.1"), now_ms=1_500).fills
    assert fill.price == Decimal("101.1")
    assert fill.liquidity is Liquidity.TAKER


@pytest.mark.parametrize(("probability", "fills"), [(1.0, 1), (0.0, 0)])
def test_touched_limit_fills_with_the_configured_probability(
    probability: float, fills: int
) -> None:
    v = venue(touch_fill_probability=probability)
    v.submit(request(Side.BUY, "1", limit="99"), now_ms=1_500)
    reports = v.on_quote(quote("98", "99", ts_ms=2_000))
    assert sum(len(r.fills) for r in reports) == fills


def test_touch_fills_are_random_but_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[int]:
        v = venue(seed=seed)
        v.submit(request(Side.BUY, "5", limit="99"), now_ms=1_500)
        touches = [quote("98", "99", volume="0.1", ts_ms=2_000 + i) for i in range(30)]
        return [sum(len(r.fills) for r in v.on_quote(t)) for t in touches]

    outcome = run(7)
    assert outcome == run(7)
    assert 0 < sum(outcome) < len(outcome)
    assert outcome != run(8)


def test_buy_reserves_cash_and_cancel_releases_it() -> None:
    v = venue()
    v.submit(request(Side.BUY, "10", limit="99"), now_ms=1_500)
    assert v.reserved_cash == Decimal(990) * Decimal("1.001")
    assert v.available_cash == CASH - v.reserved_cash
    report = v.cancel(ClientOrderId("qt-1"), now_ms=1_600)
    assert report.order.status is OrderStatus.CANCELED
    assert report.events[-1].to_status is OrderStatus.CANCELED
    assert v.reserved_cash == 0 and v.available_cash == CASH


def test_sell_reserves_holdings_until_canceled() -> None:
    v = venue(holdings="3")
    v.submit(request(Side.SELL, "2", limit="110"), now_ms=1_500)
    assert v.available_quantity(BTC) == 1
    rejected = v.submit(request(Side.SELL, "2", cid="qt-2"), now_ms=1_600)
    assert rejected.order.status is OrderStatus.REJECTED
    v.cancel(ClientOrderId("qt-1"), now_ms=1_700)
    assert v.available_quantity(BTC) == 3


def test_partial_fill_releases_the_filled_share_of_the_reservation() -> None:
    v = venue()
    v.submit(request(Side.BUY, "4", limit="99"), now_ms=1_500)
    v.on_quote(quote("97", "98", volume="1", ts_ms=2_000))
    assert v.reserved_cash == Decimal(3) * 99 * Decimal("1.001")


def test_cancel_all_cancels_every_open_order_of_a_symbol() -> None:
    v = venue()
    v.on_quote(quote("10", "11", ts_ms=1_000, symbol=ETH))
    v.submit(request(Side.BUY, "1", limit="90", cid="a"), now_ms=1_500)
    v.submit(request(Side.BUY, "1", limit="80", cid="b"), now_ms=1_500)
    v.submit(request(Side.BUY, "1", limit="9", cid="c", symbol=ETH), now_ms=1_500)
    reports = v.cancel_all(now_ms=2_000, symbol=BTC)
    assert {r.order.client_order_id for r in reports} == {"a", "b"}
    assert [o.client_order_id for o in v.open_orders()] == ["c"]
    assert len(v.cancel_all(now_ms=2_100)) == 1
    assert v.reserved_cash == 0


def test_canceling_a_filled_order_is_an_invalid_transition() -> None:
    v = venue()
    v.submit(request(Side.BUY, "1"), now_ms=1_500)
    with pytest.raises(InvalidTransition, match="from FILLED to CANCELED"):
        v.cancel(ClientOrderId("qt-1"), now_ms=1_600)


def test_canceling_an_unknown_order_raises() -> None:
    with pytest.raises(UnknownOrder):
        venue().cancel(ClientOrderId("nope"), now_ms=1)


def test_buy_beyond_available_cash_is_rejected() -> None:
    report = venue().submit(request(Side.BUY, "99"), now_ms=1_500)
    assert report.order.status is OrderStatus.REJECTED
    assert "insufficient balance" in report.reason
    assert [e.to_status for e in report.events] == [OrderStatus.NEW, OrderStatus.REJECTED]


def test_sell_without_holdings_is_rejected() -> None:
    report = venue().submit(request(Side.SELL, "1"), now_ms=1_500)
    assert report.order.status is OrderStatus.REJECTED
    assert "insufficient BTCUSDT" in report.reason


def test_market_order_without_a_quote_is_rejected() -> None:
    report = venue().submit(request(Side.BUY, "1", symbol=ETH), now_ms=1_500)
    assert report.order.status is OrderStatus.REJECTED
    assert "no quote" in report.reason


def test_resubmitting_a_client_order_id_does_not_trade_twice() -> None:
    v = venue()
    first = v.submit(request(Side.BUY, "1"), now_ms=1_500)
    again = v.submit(request(Side.BUY, "1"), now_ms=1_600)
    assert again.duplicate and again.fills == () and again.events == ()
    assert again.order == first.order
    assert v.holding(BTC) == 1


def test_immediate_or_cancel_limit_remainder_is_canceled() -> None:
    v = venue()
    report = v.submit(request(Side.BUY, "15", limit="102", tif=TimeInForce.IOC), now_ms=1_500)
    assert report.order.status is OrderStatus.CANCELED
    assert report.order.filled_quantity == 10
    assert v.reserved_cash == 0


def test_order_events_record_the_whole_lifecycle() -> None:
    report = venue().submit(request(Side.BUY, "1"), now_ms=1_500)
    assert [(e.sequence, e.to_status) for e in report.events] == [
        (0, OrderStatus.NEW),
        (1, OrderStatus.ACCEPTED),
        (2, OrderStatus.FILLED),
    ]


def test_portfolio_built_from_venue_fills_agrees_with_venue_cash() -> None:
    v = venue(holdings="0")
    fills = list(v.submit(request(Side.BUY, "12", limit="106", cid="a"), now_ms=1_500).fills)
    for report in v.on_quote(quote("104", "105", volume="3", ts_ms=2_000)):
        fills.extend(report.fills)
    v.on_quote(quote("103", "104", volume="10", ts_ms=2_400))
    fills.extend(v.submit(request(Side.SELL, "7", cid="b"), now_ms=2_500).fills)
    portfolio = Portfolio.replay(CASH, fills)
    assert portfolio.cash == v.cash
    assert portfolio.position(BTC).quantity == v.holding(BTC) == 5


def restored(v: PaperVenue, fills: list[Fill], *, keep_reservations: bool = True) -> PaperVenue:
    return PaperVenue.restore(
        initial_cash=CASH,
        fills=fills,
        open_orders=[
            WorkingOrder(o, v.reserved_cash_of(o.client_order_id) if keep_reservations else None)
            for o in v.open_orders()
        ],
        quotes=[quote("100", "102", volume="10", ts_ms=2_000)],
        config=VenueConfig(touch_fill_probability=0.5),
    )


def state(v: PaperVenue) -> tuple[object, ...]:
    return (
        v.cash,
        v.reserved_cash,
        v.available_cash,
        v.holding(BTC),
        v.available_quantity(BTC),
        v.open_orders(),
        [v.reserved_cash_of(o.client_order_id) for o in v.open_orders()],
    )


def busy_venue() -> tuple[PaperVenue, list[Fill]]:
    """A partly filled marketable limit buy still working, a resting buy and a resting sell."""
    v = venue()
    fills: list[Fill] = []
    fills += v.submit(request(Side.BUY, "15", limit="103", cid="m-1"), now_ms=1_500).fills
    fills += v.on_quote(quote("100", "102", volume="3", ts_ms=2_000))[0].fills
    fills += v.submit(request(Side.BUY, "2", limit="95", cid="l-1"), now_ms=2_100).fills
    fills += v.submit(request(Side.SELL, "4", limit="110", cid="s-1"), now_ms=2_200).fills
    return v, fills


def test_restore_rebuilds_balances_reservations_and_working_orders_exactly() -> None:
    v, fills = busy_venue()
    assert {o.client_order_id for o in v.open_orders()} == {"m-1", "l-1", "s-1"}
    again = restored(v, fills)
    assert state(again) == state(v)

    # And both behave alike from here: fill ids continue, balances move the same way, and
    # the marketable limit still takes liquidity.
    for tick in (
        quote("101", "102", volume="20", ts_ms=3_000),
        quote("111", "112", volume="20", ts_ms=4_000),
    ):
        original = [(r.order, r.fills) for r in v.on_quote(tick)]
        assert [(r.order, r.fills) for r in again.on_quote(tick)] == original
        assert state(again) == state(v)
        if tick.ts_ms == 3_000:
            ((_order, (taken,)),) = original
            assert (taken.fill_id, taken.liquidity) == ("m-1-3", Liquidity.TAKER)


def test_restore_without_stored_reservations_re_derives_them_as_admission_does() -> None:
    v = venue()
    v.submit(request(Side.BUY, "2", limit="95", cid="l-1"), now_ms=1_500)
    assert restored(v, []).reserved_cash == v.reserved_cash == 2 * Decimal(95) * Decimal("1.001")
    _v, fills = busy_venue()
    again = restored(_v, fills, keep_reservations=False)
    assert again.reserved_cash_of(ClientOrderId("m-1")) == _v.reserved_cash_of(ClientOrderId("m-1"))


def test_restore_refuses_an_order_that_is_not_open() -> None:
    v = venue()
    done = v.submit(request(Side.BUY, "1", cid="d-1"), now_ms=1_500).order
    with pytest.raises(ValueError, match="FILLED"):
        PaperVenue.restore(initial_cash=CASH, fills=[], open_orders=[WorkingOrder(done)])
