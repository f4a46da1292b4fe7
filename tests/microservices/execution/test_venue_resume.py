"""`GatedVenue.resume`: a replica that takes in what another did equals the one that did it.

One venue runs a random sequence of orders, quotes and cancels. A second venue is restored
from the first as it was part-way (as a replica that last held the shared venue then), and
resumes from what the database holds at the end: the fills written since, every open order
with its fills, the latest quotes. It must then hold the same cash, holdings, reservations
and working orders as the first, and fill the next quotes exactly as a venue restarted from
those rows does (same fill ids, prices, fees and liquidity).
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.types import (
    ClientOrderId,
    Fill,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)
from backend.trading.venue import VenueConfig, WorkingOrder
from microservices.execution.desk import GatedVenue

SYMBOL = Symbol("BTCUSDT")
CASH = Decimal(10_000)
CONFIG = VenueConfig(touch_fill_probability=1.0)  # no randomness: both venues must agree

order_ops = st.tuples(
    st.just("order"),
    st.sampled_from([Side.BUY, Side.SELL]),
    st.sampled_from([OrderType.LIMIT, OrderType.MARKET]),
    st.integers(min_value=5, max_value=40),  # quantity in hundredths
    st.integers(min_value=-30, max_value=30),  # limit price offset from 100, in ticks of 0.1
)
quote_ops = st.tuples(
    st.just("quote"),
    st.integers(min_value=-30, max_value=30),  # mid offset from 100
    st.integers(min_value=1, max_value=5),  # half-spread, in ticks of 0.01
    st.integers(min_value=1, max_value=30),  # volume at the touch, in hundredths: partial fills
    st.just(0),
)
cancel_ops = st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0), st.just(0), st.just(0))
operations = st.lists(st.one_of(order_ops, quote_ops, cancel_ops), min_size=1, max_size=40)


def quote(offset: int, half_spread: int, volume: int, ts_ms: int) -> Quote:
    mid = Decimal(100) + Decimal(offset) / 10
    spread = Decimal(half_spread) / 100
    return Quote(SYMBOL, mid - spread, mid + spread, mid, Decimal(volume) / 100, ts_ms)


class Run:
    """One venue through the operations, with what the database would hold at each step."""

    def __init__(self) -> None:
        self.venue = GatedVenue(cash=CASH, config=CONFIG)
        self.fills: list[Fill] = []
        self.quotes: dict[Symbol, Quote] = {}
        self.count = 0

    def apply(self, op: tuple[str, object, object, int, int], ts_ms: int) -> None:
        kind = op[0]
        if kind == "quote":
            q = quote(int(op[1]), int(op[2]), int(op[3]), ts_ms)  # type: ignore[call-overload]
            self.quotes[q.symbol] = q
            for report in self.venue.on_quote(q):
                self.fills.extend(report.fills)
        elif kind == "order":
            side, order_type, hundredths, offset = op[1], op[2], op[3], op[4]
            assert isinstance(side, Side) and isinstance(order_type, OrderType)
            self.count += 1
            request = OrderRequest(
                ClientOrderId(f"o{self.count}"),
                SYMBOL,
                side,
                Decimal(hundredths) / 100,
                order_type,
                Decimal(100) + Decimal(offset) / 10 if order_type is OrderType.LIMIT else None,
                TimeInForce.GTC,
            )
            self.fills.extend(self.venue.submit(request, ts_ms).fills)
        else:
            working = self.venue.open_orders()
            if working:
                cid = working[int(op[1]) % len(working)].client_order_id  # type: ignore[call-overload]
                self.venue.cancel(cid, ts_ms)

    def open_with_fills(self) -> list[tuple[WorkingOrder, list[Fill]]]:
        return [
            (
                WorkingOrder(o, self.venue.reserved_cash_of(o.client_order_id)),
                [f for f in self.fills if f.client_order_id == o.client_order_id],
            )
            for o in self.venue.open_orders()
        ]


def book(venue: GatedVenue) -> tuple[object, ...]:
    return (
        venue.cash,
        venue.holding(SYMBOL),
        venue.available_quantity(SYMBOL),
        venue.reserved_cash,
        venue.available_cash,
        venue.open_orders(),
        {
            o.client_order_id: (
                venue.reserved_cash_of(o.client_order_id),
                # What the next fill of a working order depends on: its fee carry and count.
                venue._fee_carry.get(o.client_order_id),
                venue._fill_counts.get(o.client_order_id),
            )
            for o in venue.open_orders()
        },
    )


@settings(max_examples=200, deadline=None)
@given(before=operations, after=operations)
def test_a_resumed_venue_equals_the_one_that_did_the_work(
    before: list[tuple[str, object, object, int, int]],
    after: list[tuple[str, object, object, int, int]],
) -> None:
    run = Run()
    ts = 1_000
    for op in before:
        ts += 10
        run.apply(op, ts)
    # The other replica, as it last held the venue: restored from what was written then.
    replica = GatedVenue.restore(
        initial_cash=CASH,
        fills=list(run.fills),
        open_orders=[w for w, _ in run.open_with_fills()],
        quotes=run.quotes.values(),
        config=CONFIG,
    )
    assert isinstance(replica, GatedVenue)
    seen = len(run.fills)
    for op in after:
        ts += 10
        run.apply(op, ts)
    replica.resume(
        fills=run.fills[seen:], open_orders=run.open_with_fills(), quotes=run.quotes.values()
    )
    assert book(replica) == book(run.venue)

    # The next quotes cross every working order: the resumed venue fills them as a venue
    # restarted from the same rows does (a limit order that arrived marketable but found no
    # volume left is known as a taker only by the venue it arrived at, as after a restart).
    restarted = GatedVenue.restore(
        initial_cash=CASH,
        fills=list(run.fills),
        open_orders=[w for w, _ in run.open_with_fills()],
        quotes=run.quotes.values(),
        config=CONFIG,
    )
    assert book(restarted) == book(replica)
    for bid, ask in (("69.99", "70.00"), ("130.00", "130.01")):
        ts += 10
        crossing = Quote(SYMBOL, Decimal(bid), Decimal(ask), Decimal(bid), Decimal(1000), ts)
        ours = [fill_key(f) for r in restarted.on_quote(crossing) for f in r.fills]
        theirs = [fill_key(f) for r in replica.on_quote(crossing) for f in r.fills]
        assert theirs == ours
        assert book(replica) == book(restarted)


def fill_key(fill: Fill) -> tuple[object, ...]:
    return (fill.fill_id, fill.quantity, fill.price, fill.fee, fill.liquidity)
