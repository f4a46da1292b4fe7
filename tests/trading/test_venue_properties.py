"""Properties of the paper venue over random sessions: balances, prices, fees, reduce-only."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.instruments import DEFAULT_INSTRUMENTS, Instrument
from backend.trading.orders import OrderStatus
from backend.trading.types import (
    ClientOrderId,
    Fill,
    Liquidity,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)
from backend.trading.venue import BPS, PaperVenue, VenueConfig, VenueReport

D = Decimal
ZERO = D(0)
SYMBOLS = (Symbol("BTCUSDT"), Symbol("SOLUSDT"))
CONFIG = VenueConfig(touch_fill_probability=0.5)
CAP = CONFIG.max_slippage_bps / BPS


def rules(symbol: Symbol) -> Instrument:
    instrument = DEFAULT_INSTRUMENTS.get(symbol)
    assert instrument is not None
    return instrument


@dataclass(frozen=True)
class NewQuote:
    symbol: Symbol
    move_ticks: int  # the bid moves this many ticks from the last quote's (from 100 000 ticks)
    spread_ticks: int
    volume_lots: int


@dataclass(frozen=True)
class Submit:
    symbol: Symbol
    side: Side
    lots: int
    limit_offset_ticks: int | None  # from the mid of the last quote; None: a market order
    tif: TimeInForce
    reduce_only: bool


@dataclass(frozen=True)
class Cancel:
    pick: int


@dataclass(frozen=True)
class CancelAll:
    pass


symbols = st.sampled_from(SYMBOLS)
quotes = st.builds(
    NewQuote, symbols, st.integers(-400, 400), st.integers(1, 40), st.integers(0, 60_000)
)
submits = st.builds(
    Submit,
    symbols,
    st.sampled_from(Side),
    st.integers(1, 30_000),
    st.one_of(st.none(), st.integers(-600, 600)),
    st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC]),
    st.sampled_from([False, False, True]),
)
# Cancels are rarer than quotes and orders, so that resting orders live to be crossed.
actions = st.one_of(
    *([quotes, submits] * 6), st.builds(Cancel, st.integers(0, 10)), st.just(CancelAll())
)


class Session:
    """Drives a venue and checks every report against the quote it happened on."""

    def __init__(self, cash: Decimal, seed: int, holding: Decimal = ZERO) -> None:
        self.initial_cash = cash
        self.initial_holding = holding
        self.venue = PaperVenue(
            cash=cash, holdings=dict.fromkeys(SYMBOLS, holding), config=CONFIG, seed=seed
        )
        self.quotes: dict[Symbol, Quote] = {}
        self.requests: dict[ClientOrderId, OrderRequest] = {}
        self.fills: list[Fill] = []
        self.ts_ms = 1
        self.count = 0

    def run(self, action: object) -> None:
        self.ts_ms += 1
        reports: list[VenueReport]
        if isinstance(action, NewQuote):
            step = rules(action.symbol).tick_size
            last = self.quotes.get(action.symbol)
            bid = (last.bid if last else 100_000 * step) + action.move_ticks * step
            bid = max(bid, step)
            ask = bid + action.spread_ticks * step
            volume = action.volume_lots * rules(action.symbol).lot_size
            quote = Quote(action.symbol, bid, ask, bid, volume, self.ts_ms)
            self.quotes[action.symbol] = quote
            reports = self.venue.on_quote(quote)
        elif isinstance(action, Submit):
            reports = [self.submit(action)]
        elif isinstance(action, Cancel):
            open_orders = self.venue.open_orders()
            if not open_orders:
                return
            cid = open_orders[action.pick % len(open_orders)].client_order_id
            reports = [self.venue.cancel(cid, self.ts_ms)]
        else:
            reports = self.venue.cancel_all(self.ts_ms)
        for report in reports:
            for fill in report.fills:
                self.check_fill(fill)
            self.fills.extend(report.fills)
        self.check_balances()

    def submit(self, action: Submit) -> VenueReport:
        self.count += 1
        cid = ClientOrderId(f"o-{self.count}")
        instrument = rules(action.symbol)
        quote = self.quotes.get(action.symbol)
        limit = None
        if action.limit_offset_ticks is not None:
            mid = quote.mid if quote is not None else D(100)
            limit = instrument.round_price(mid, Side.BUY) + action.limit_offset_ticks * (
                instrument.tick_size
            )
            limit = max(limit, instrument.tick_size)
        request = OrderRequest(
            cid,
            action.symbol,
            action.side,
            action.lots * instrument.lot_size,
            OrderType.LIMIT if limit is not None else OrderType.MARKET,
            limit,
            action.tif,
            action.reduce_only,
        )
        self.requests[cid] = request
        available_before = self.venue.available_cash
        report = self.venue.submit(request, self.ts_ms)
        if request.side is Side.BUY and report.order.status is not OrderStatus.REJECTED:
            spent = sum((f.quantity * f.price + f.fee for f in report.fills), ZERO)
            assert spent <= available_before
        if request.reduce_only and request.side is Side.BUY:
            assert report.order.status is OrderStatus.REJECTED
        if request.order_type is OrderType.MARKET or request.time_in_force is TimeInForce.IOC:
            assert not report.order.status.is_open
        return report

    def check_fill(self, fill: Fill) -> None:
        request = self.requests[fill.client_order_id]
        instrument = rules(fill.symbol)
        quote = self.quotes[fill.symbol]
        assert fill.quantity > 0 and fill.quantity % instrument.lot_size == 0
        assert fill.price % instrument.tick_size == 0
        assert fill.fee >= 0 and fill.fee.as_tuple().exponent >= -instrument.quote_precision
        if fill.side is Side.BUY:
            touch = quote.ask
            worst = instrument.round_price(touch * (1 + CAP), Side.BUY)
            if fill.liquidity is Liquidity.TAKER:
                assert touch <= fill.price <= worst
            else:
                assert fill.price == instrument.round_price(touch, Side.BUY)
            if request.limit_price is not None:
                assert fill.price <= request.limit_price
        else:
            touch = quote.bid
            worst = instrument.round_price(touch * (1 - CAP), Side.SELL)
            if fill.liquidity is Liquidity.TAKER:
                assert worst <= fill.price <= touch
            else:
                assert fill.price == instrument.round_price(touch, Side.SELL)
            if request.limit_price is not None:
                assert fill.price >= request.limit_price
        if request.order_type is OrderType.MARKET:
            assert fill.liquidity is Liquidity.TAKER

    def check_balances(self) -> None:
        venue = self.venue
        assert venue.cash >= 0
        assert venue.available_cash >= 0
        cash = self.initial_cash
        held = dict.fromkeys(SYMBOLS, self.initial_holding)
        for fill in self.fills:
            sign = fill.side.sign
            cash -= sign * fill.quantity * fill.price + fill.fee
            held[fill.symbol] += sign * fill.quantity
        assert venue.cash == cash
        for symbol in SYMBOLS:
            assert venue.holding(symbol) == held[symbol] >= 0
            assert venue.available_quantity(symbol) >= 0
            # Reduce-only or not, the working sells never add up to more than the position.
            selling = sum(
                (o.remaining_quantity for o in venue.open_orders(symbol) if o.side is Side.SELL),
                ZERO,
            )
            assert selling <= venue.holding(symbol)
        for order in venue.open_orders():
            assert order.order_type is OrderType.LIMIT
            assert venue.reserved_cash_of(order.client_order_id) >= 0
        # Each order's fees are its exact fees rounded up, never by more than one quote unit.
        charged: dict[ClientOrderId, Decimal] = {}
        exact: dict[ClientOrderId, Decimal] = {}
        for fill in self.fills:
            rate = CONFIG.fee_bps(fill.liquidity) / BPS
            charged[fill.client_order_id] = charged.get(fill.client_order_id, ZERO) + fill.fee
            exact[fill.client_order_id] = (
                exact.get(fill.client_order_id, ZERO) + fill.quantity * fill.price * rate
            )
        for cid, fee in charged.items():
            assert exact[cid] <= fee < exact[cid] + D("1e-8")


@settings(max_examples=400, deadline=None)
@given(
    cash=st.sampled_from([D(50), D("1000.5"), D(100_000)]),
    holding=st.sampled_from([ZERO, D("0.5"), D(3)]),
    seed=st.integers(0, 10),
    steps=st.lists(actions, min_size=8, max_size=40),
)
def test_random_sessions_keep_balances_non_negative_and_fills_within_the_market(
    cash: Decimal, holding: Decimal, seed: int, steps: list[object]
) -> None:
    session = Session(cash, seed, holding)
    for symbol in SYMBOLS:
        session.run(NewQuote(symbol, 0, 2, 10_000))
    for step in steps:
        session.run(step)
    session.venue.cancel_all(session.ts_ms + 1)
    assert session.venue.reserved_cash == 0
    assert session.venue.available_cash == session.venue.cash
    for symbol in SYMBOLS:
        assert session.venue.available_quantity(symbol) == session.venue.holding(symbol)


@settings(max_examples=200, deadline=None)
@given(
    exits=st.lists(st.integers(1, 30_000), min_size=1, max_size=8),
    limits=st.lists(st.one_of(st.none(), st.integers(-50, 50)), min_size=8, max_size=8),
)
def test_reduce_only_sells_working_together_never_exceed_the_position(
    exits: list[int], limits: list[int | None]
) -> None:
    session = Session(D(100_000), 0)
    symbol = SYMBOLS[0]
    session.run(NewQuote(symbol, 0, 2, 50_000))
    session.run(Submit(symbol, Side.BUY, 40_000, None, TimeInForce.GTC, False))
    position = session.venue.holding(symbol)
    accepted = ZERO
    for lots, offset in zip(exits, limits, strict=False):
        session.run(Submit(symbol, Side.SELL, lots, offset, TimeInForce.GTC, True))
        order = session.venue.order(ClientOrderId(f"o-{session.count}"))
        if order.status is not OrderStatus.REJECTED:
            accepted += order.quantity
    assert accepted <= position
    # Fill everything that is working: the position goes to at most zero, never below.
    session.run(NewQuote(symbol, 20_000, 2, 60_000))
    assert session.venue.holding(symbol) >= 0
    assert session.venue.holding(symbol) == position - sum(
        (f.quantity for f in session.fills if f.side is Side.SELL), ZERO
    )


@settings(max_examples=300, deadline=None)
@given(
    symbol=symbols,
    side=st.sampled_from(Side),
    lots=st.integers(1_000, 30_000),
    away_ticks=st.integers(1, 300),
    move_ticks=st.integers(-600, 600),
    spread_ticks=st.integers(1, 40),
    volume_lots=st.integers(0, 60_000),
)
def test_a_resting_limit_fills_at_its_limit_or_the_better_touch(
    symbol: Symbol,
    side: Side,
    lots: int,
    away_ticks: int,
    move_ticks: int,
    spread_ticks: int,
    volume_lots: int,
) -> None:
    session = Session(D(10_000_000), 0, D(10))
    session.run(NewQuote(symbol, 0, 2, 10_000))
    quote = session.quotes[symbol]
    touch = quote.bid if side is Side.BUY else quote.ask  # away from the market: it rests
    offset = (touch - quote.mid) / rules(symbol).tick_size - away_ticks * side.sign
    session.run(Submit(symbol, side, lots, int(offset), TimeInForce.GTC, False))
    (order,) = session.venue.open_orders()
    assert order.filled_quantity == 0
    session.run(NewQuote(symbol, move_ticks, spread_ticks, volume_lots))  # checks every fill
    for fill in session.fills:
        assert fill.liquidity is Liquidity.MAKER
