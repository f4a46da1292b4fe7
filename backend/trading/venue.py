"""Paper venue: fills orders against quotes with slippage, fees, partial fills and reservations."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from backend.trading.instruments import (
    DEFAULT_INSTRUMENTS,
    Instrument,
    Instruments,
    RuleViolation,
)
from backend.trading.orders import (
    Order,
    OrderEvent,
    OrderEventKind,
    OrderEventRecord,
    create_order,
    transition,
)
from backend.trading.types import (
    ClientOrderId,
    Fill,
    FillId,
    Liquidity,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)

ZERO = Decimal(0)
BPS = Decimal(10_000)

MARKET_REMAINDER = "market order remainder canceled: market orders never rest"


class UnknownOrder(KeyError):
    """Raised when a client order id is not known to the venue."""


@dataclass(frozen=True, slots=True)
class VenueConfig:
    """Fee and fill model, and the instruments traded.

    Slippage grows with the depth an order reaches on its side of one quote (the quantity
    already taken there plus its own) over the quote's volume, `impact_bps` at one full
    volume, capped at `max_slippage_bps`.
    """

    taker_fee_bps: Decimal = Decimal(10)
    maker_fee_bps: Decimal = Decimal(2)
    impact_bps: Decimal = Decimal(50)
    max_slippage_bps: Decimal = Decimal(25)
    touch_fill_probability: float = 0.5
    instruments: Instruments = field(default=DEFAULT_INSTRUMENTS)

    def __post_init__(self) -> None:
        if min(self.taker_fee_bps, self.maker_fee_bps, self.impact_bps) < ZERO:
            raise ValueError("fees and impact must not be negative")
        if max(self.taker_fee_bps, self.maker_fee_bps) >= BPS:
            raise ValueError("fees must be below 10000 bps")
        if self.max_slippage_bps < ZERO:
            raise ValueError("max_slippage_bps must be >= 0")
        if not 0.0 <= self.touch_fill_probability <= 1.0:
            raise ValueError("touch_fill_probability must be in [0, 1]")

    def fee_bps(self, liquidity: Liquidity) -> Decimal:
        """The fee rate of a fill with this liquidity."""
        return self.maker_fee_bps if liquidity is Liquidity.MAKER else self.taker_fee_bps


@dataclass(frozen=True, slots=True)
class VenueReport:
    """What one venue call did to one order: its new state, fills and transition records."""

    order: Order
    fills: tuple[Fill, ...] = ()
    events: tuple[OrderEventRecord, ...] = ()
    duplicate: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """An open order as a restart finds it persisted, with the cash it holds reserved.

    `reserved_cash` None (orders stored before reservations were) is re-derived as admission
    does; for a market buy that uses its average fill price in place of the unknown ask.
    """

    order: Order
    reserved_cash: Decimal | None = None


class PaperVenue:
    """An in-memory spot venue. Cash is in the quote currency; holdings are per symbol.

    Buys reserve cash (the order's worst price, on the tick grid, plus the most its fees can
    come to) and sells reserve holdings when accepted; the reservation shrinks as the order
    fills and is released when it is done. Fills are never worse than the market: a limit
    order fills at its limit or better, a market order only on the quote it arrives on
    (its rest is canceled). Randomness (filling a resting limit order whose price is merely
    touched) comes from a seeded RNG.
    """

    def __init__(
        self,
        *,
        cash: Decimal,
        holdings: Mapping[Symbol, Decimal] | None = None,
        config: VenueConfig | None = None,
        seed: int = 0,
    ) -> None:
        if cash < ZERO:
            raise ValueError("cash must not be negative")
        self._config = config or VenueConfig()
        self._rng = random.Random(seed)
        self._cash = cash
        self._holdings: dict[Symbol, Decimal] = dict(holdings or {})
        self._orders: dict[ClientOrderId, Order] = {}
        self._reserved_cash: dict[ClientOrderId, Decimal] = {}
        self._reserved_quantity: dict[ClientOrderId, Decimal] = {}
        self._fill_counts: dict[ClientOrderId, int] = {}
        # Fees charged to an order minus its exact fees so far: always in [0, one quote unit).
        self._fee_carry: dict[ClientOrderId, Decimal] = {}
        # Limit orders that were marketable when they arrived: they take liquidity for good.
        self._takers: set[ClientOrderId] = set()
        self._quotes: dict[Symbol, Quote] = {}
        self._volume_used: dict[tuple[Symbol, Side], Decimal] = {}

    @classmethod
    def restore(
        cls,
        *,
        initial_cash: Decimal,
        fills: Iterable[Fill],
        open_orders: Iterable[WorkingOrder],
        quotes: Iterable[Quote] = (),
        config: VenueConfig | None = None,
        seed: int = 0,
    ) -> PaperVenue:
        """The venue a restart finds: balances after every fill, the open orders and their
        reservations, and the latest quotes (kept, not matched: they are not new ticks).

        Fill ids continue where they stopped. The RNG starts again from `seed`. An open limit
        order with a taker fill keeps taking liquidity; each open order's fee carry is
        re-derived from its fills at the configured fee rates.
        """
        venue = cls(cash=initial_cash, config=config, seed=seed)
        charged: dict[ClientOrderId, Decimal] = {}
        exact: dict[ClientOrderId, Decimal] = {}
        for fill in fills:
            cid = fill.client_order_id
            holding = venue._holdings.get(fill.symbol, ZERO)
            if fill.side is Side.BUY:
                venue._cash -= fill.quantity * fill.price + fill.fee
                venue._holdings[fill.symbol] = holding + fill.quantity
            else:
                venue._cash += fill.quantity * fill.price - fill.fee
                venue._holdings[fill.symbol] = holding - fill.quantity
            venue._fill_counts[cid] = venue._fill_counts.get(cid, 0) + 1
            if fill.liquidity is Liquidity.TAKER:
                venue._takers.add(cid)
            charged[cid] = charged.get(cid, ZERO) + fill.fee
            rate = venue._config.fee_bps(fill.liquidity)
            exact[cid] = exact.get(cid, ZERO) + fill.quantity * fill.price * rate / BPS
        for working in open_orders:
            order = working.order
            if not order.status.is_open:
                raise ValueError(f"order {order.client_order_id} is {order.status.value}, not open")
            cid = order.client_order_id
            venue._orders[cid] = order
            instrument = venue._config.instruments.get(order.symbol)
            if cid in charged and instrument is not None:
                carry = charged[cid] - exact[cid]
                venue._fee_carry[cid] = min(max(carry, ZERO), instrument.quote_unit)
            if order.side is Side.SELL:
                venue._reserved_quantity[cid] = order.remaining_quantity
            else:
                reserved = working.reserved_cash
                if reserved is None:
                    reserved = venue._derived_reservation(order)
                venue._reserved_cash[cid] = reserved
        venue._takers &= set(venue._orders)
        for quote in quotes:
            venue._quotes[quote.symbol] = quote
        return venue

    def _derived_reservation(self, order: Order) -> Decimal:
        if order.limit_price is not None:
            return self._buy_reservation(order, order.limit_price)
        average = order.average_fill_price or ZERO
        price = average * (1 + self._config.max_slippage_bps / BPS)
        return order.remaining_quantity * price * (1 + self._max_fee_bps / BPS)

    # Balances and orders ----------------------------------------------------------------------

    @property
    def config(self) -> VenueConfig:
        """The fee and fill model and the instruments."""
        return self._config

    @property
    def cash(self) -> Decimal:
        """Cash held, including the part reserved for open buy orders."""
        return self._cash

    @property
    def reserved_cash(self) -> Decimal:
        """Cash set aside for open buy orders."""
        return sum(self._reserved_cash.values(), ZERO)

    @property
    def available_cash(self) -> Decimal:
        """Cash a new buy order may reserve."""
        return self._cash - self.reserved_cash

    def holding(self, symbol: Symbol) -> Decimal:
        """Quantity of `symbol` held, including the part reserved for open sell orders."""
        return self._holdings.get(symbol, ZERO)

    def available_quantity(self, symbol: Symbol) -> Decimal:
        """Quantity of `symbol` a new sell order may reserve: not committed to working sells."""
        return self.holding(symbol) - self._committed_to_sells(symbol)

    def _committed_to_sells(self, symbol: Symbol) -> Decimal:
        return sum(
            (q for cid, q in self._reserved_quantity.items() if self._orders[cid].symbol == symbol),
            ZERO,
        )

    def reserved_cash_of(self, client_order_id: ClientOrderId) -> Decimal:
        """Cash held back for the rest of one open buy order (0 for any other order)."""
        return self._reserved_cash.get(client_order_id, ZERO)

    def order(self, client_order_id: ClientOrderId) -> Order:
        """The venue's current view of an order."""
        try:
            return self._orders[client_order_id]
        except KeyError:
            raise UnknownOrder(client_order_id) from None

    def open_orders(self, symbol: Symbol | None = None) -> list[Order]:
        """Orders that can still fill, oldest first."""
        return [
            o
            for o in self._orders.values()
            if o.status.is_open and (symbol is None or o.symbol == symbol)
        ]

    def violation(self, request: OrderRequest) -> RuleViolation | None:
        """The instrument rule `request` breaks (unknown symbol included), at the current quote."""
        return self._config.instruments.violation(request, self._quotes.get(request.symbol))

    # Orders -----------------------------------------------------------------------------------

    def submit(self, request: OrderRequest, now_ms: int) -> VenueReport:
        """Accept (or reject) an order and fill what the current quote allows.

        A market order, and an IOC limit order, is canceled for whatever this quote cannot
        fill. Submitting a known client order id again changes nothing and returns the
        existing order with `duplicate=True`.
        """
        existing = self._orders.get(request.client_order_id)
        if existing is not None:
            return VenueReport(existing, duplicate=True)
        order, created = create_order(request, now_ms)
        events = [created]
        problem, reserve_cash, reserve_quantity = self._admission(request)
        if problem:
            order, record = transition(
                order, OrderEvent(OrderEventKind.REJECT, now_ms, reason=problem)
            )
            self._orders[order.client_order_id] = order
            return VenueReport(order, (), (*events, record), reason=problem)

        cid = order.client_order_id
        order, record = transition(order, OrderEvent(OrderEventKind.ACCEPT, now_ms))
        events.append(record)
        self._orders[cid] = order
        if reserve_cash > ZERO:
            self._reserved_cash[cid] = reserve_cash
        if reserve_quantity > ZERO:
            self._reserved_quantity[cid] = reserve_quantity

        fills: list[Fill] = []
        quote = self._quotes.get(request.symbol)
        if quote is not None:
            self._match(cid, quote, now_ms, arriving=True, fills=fills, events=events)
        order = self._orders[cid]
        if order.status.is_open:
            if order.order_type is OrderType.MARKET:
                self._cancel(cid, now_ms, MARKET_REMAINDER, events)
            elif order.time_in_force is TimeInForce.IOC:
                self._cancel(cid, now_ms, "IOC remainder", events)
        return VenueReport(self._orders[cid], tuple(fills), tuple(events))

    def on_quote(self, quote: Quote) -> list[VenueReport]:
        """Take a new quote and fill the symbol's working orders it allows, oldest first."""
        self._quotes[quote.symbol] = quote
        for side in Side:
            self._volume_used[(quote.symbol, side)] = ZERO
        reports: list[VenueReport] = []
        for order in self.open_orders(quote.symbol):
            fills: list[Fill] = []
            events: list[OrderEventRecord] = []
            self._match(
                order.client_order_id,
                quote,
                quote.ts_ms,
                arriving=False,
                fills=fills,
                events=events,
            )
            if events:
                reports.append(
                    VenueReport(self._orders[order.client_order_id], tuple(fills), tuple(events))
                )
        return reports

    def cancel(self, client_order_id: ClientOrderId, now_ms: int) -> VenueReport:
        """Cancel an order and release its reservation; raises InvalidTransition if it is done."""
        self.order(client_order_id)
        events: list[OrderEventRecord] = []
        self._cancel(client_order_id, now_ms, "canceled by request", events)
        return VenueReport(self._orders[client_order_id], (), tuple(events))

    def cancel_all(self, now_ms: int, symbol: Symbol | None = None) -> list[VenueReport]:
        """Cancel every open order (of one symbol, if given)."""
        return [self.cancel(o.client_order_id, now_ms) for o in self.open_orders(symbol)]

    # Admission --------------------------------------------------------------------------------

    def _admission(self, request: OrderRequest) -> tuple[str, Decimal, Decimal]:
        """(why the order is rejected or "", cash to reserve, quantity to reserve)."""
        if request.quantity <= ZERO:
            return f"quantity must be positive, got {request.quantity}", ZERO, ZERO
        if request.order_type is OrderType.LIMIT:
            if request.limit_price is None or request.limit_price <= ZERO:
                return "limit order needs a positive limit price", ZERO, ZERO
        elif request.limit_price is not None:
            return "market order must not carry a limit price", ZERO, ZERO
        violation = self.violation(request)
        if violation is not None:
            return violation.reason, ZERO, ZERO
        quote = self._quotes.get(request.symbol)
        if request.order_type is OrderType.MARKET and quote is None:
            return f"no quote for {request.symbol}", ZERO, ZERO
        if request.side is Side.SELL:
            available = self.available_quantity(request.symbol)
            if request.quantity > available:
                if request.reduce_only:
                    problem = (
                        f"reduce-only SELL of {request.quantity} {request.symbol} exceeds the "
                        f"position not committed to other sells: {available} (holding "
                        f"{self.holding(request.symbol)}, "
                        f"{self._committed_to_sells(request.symbol)} in working sells)"
                    )
                else:
                    problem = (
                        f"insufficient {request.symbol}: need {request.quantity}, have {available}"
                    )
                return problem, ZERO, ZERO
            return "", ZERO, request.quantity
        if request.reduce_only:
            return (
                f"reduce-only BUY of {request.symbol} rejected: a spot venue holds no short "
                "position for a buy to reduce",
                ZERO,
                ZERO,
            )
        unfilled, _ = create_order(request, 0)
        needed = self._buy_reservation(unfilled, self._worst_buy_price(request, quote))
        if needed > self.available_cash:
            return (
                f"insufficient balance: need {needed}, available {self.available_cash}",
                ZERO,
                ZERO,
            )
        return "", needed, ZERO

    def _instrument(self, symbol: Symbol) -> Instrument | None:
        return self._config.instruments.get(symbol)

    def _worst_buy_price(self, request: OrderRequest, quote: Quote | None) -> Decimal:
        """The most a buy can pay per unit: its limit, or the capped slippage on the tick."""
        if request.limit_price is not None:
            return request.limit_price
        assert quote is not None  # admission rejects market orders without a quote
        instrument = self._instrument(request.symbol)
        assert instrument is not None  # admission rejects unknown symbols
        return instrument.round_price(
            quote.ask * (1 + self._config.max_slippage_bps / BPS), Side.BUY
        )

    @property
    def _max_fee_bps(self) -> Decimal:
        return max(self._config.taker_fee_bps, self._config.maker_fee_bps)

    def _buy_reservation(self, order: Order, worst_price: Decimal) -> Decimal:
        """What the rest of a buy can cost at most: its notional at `worst_price` and its fees.

        Fees are charged rounded up on the order's cumulative exact fee (see `_fee_for`), so
        the rest's fees come to at most its exact fee at the highest rate it can pay, less
        the carry already charged, rounded up once.
        """
        remaining = order.remaining_quantity
        if remaining <= ZERO:
            return ZERO
        market = order.order_type is OrderType.MARKET
        rate = self._config.taker_fee_bps if market else self._max_fee_bps
        notional = remaining * worst_price
        exact_fee = notional * rate / BPS - self._fee_carry.get(order.client_order_id, ZERO)
        instrument = self._instrument(order.symbol)
        fee = instrument.round_fee(exact_fee) if instrument is not None else exact_fee
        return notional + max(fee, ZERO)

    # Matching ---------------------------------------------------------------------------------

    def _match(
        self,
        client_order_id: ClientOrderId,
        quote: Quote,
        ts_ms: int,
        *,
        arriving: bool,
        fills: list[Fill],
        events: list[OrderEventRecord],
    ) -> None:
        order = self._orders[client_order_id]
        instrument = self._instrument(order.symbol)
        if instrument is None:
            # Restored from before its symbol was dropped from the instruments: it cannot be
            # priced, so it neither fills nor is silently changed; a cancel still works.
            return
        side = order.side
        touch = quote.ask if side is Side.BUY else quote.bid
        if order.order_type is OrderType.MARKET:
            if not arriving:
                # Only an order restored from before market orders became immediate-or-cancel
                # can still be open here.
                self._cancel(client_order_id, ts_ms, MARKET_REMAINDER, events)
                return
            liquidity = Liquidity.TAKER
        else:
            assert order.limit_price is not None
            edge = (order.limit_price - touch) * side.sign
            if edge < ZERO:
                return
            if arriving:
                self._takers.add(client_order_id)
            if client_order_id in self._takers:
                liquidity = Liquidity.TAKER
            else:
                # A resting order that is only touched may or may not be reached in the queue.
                if edge == ZERO and self._rng.random() >= self._config.touch_fill_probability:
                    return
                liquidity = Liquidity.MAKER
        used = self._volume_used.get((quote.symbol, side), ZERO)
        available = instrument.floor_quantity(quote.volume - used)
        quantity = min(order.remaining_quantity, available)
        if quantity <= ZERO:
            return
        price = self._fill_price(order, instrument, quote, used + quantity, liquidity)
        fee, carry = self._fee_for(order, instrument, quantity * price, liquidity)
        if side is Side.BUY:
            spendable = self.available_cash + self._reserved_cash.get(client_order_id, ZERO)
            if quantity * price + fee > spendable:
                # Unreachable for orders the venue reserved for itself; a reservation restored
                # from older data may fall short.
                self._cancel(client_order_id, ts_ms, "insufficient balance at fill", events)
                return
        self._volume_used[(quote.symbol, side)] = used + quantity
        self._fee_carry[client_order_id] = carry
        self._book(order, quantity, price, fee, liquidity, ts_ms, fills, events)

    def _fill_price(
        self,
        order: Order,
        instrument: Instrument,
        quote: Quote,
        depth: Decimal,
        liquidity: Liquidity,
    ) -> Decimal:
        """The fill price: never worse than the touch for a maker, nor than its limit.

        A maker fills at its limit or the touch, whichever is better for it (a market that
        gaps through a resting buy fills it at the ask). A taker pays the touch moved by the
        slippage at `depth` (the quantity taken on its side of this quote, its own included),
        rounded to the tick against it, and never beyond its limit.
        """
        side = order.side
        touch = quote.ask if side is Side.BUY else quote.bid
        if liquidity is Liquidity.MAKER:
            price = instrument.round_price(touch, side)
        else:
            slippage_bps = ZERO
            if quote.volume > ZERO:
                slippage_bps = min(
                    self._config.max_slippage_bps, self._config.impact_bps * depth / quote.volume
                )
            price = instrument.round_price(touch * (1 + slippage_bps / BPS * side.sign), side)
        if order.limit_price is not None:
            price = (
                min(price, order.limit_price) if side is Side.BUY else max(price, order.limit_price)
            )
        return price

    def _fee_for(
        self, order: Order, instrument: Instrument, notional: Decimal, liquidity: Liquidity
    ) -> tuple[Decimal, Decimal]:
        """(fee to charge, the order's fee carry after it).

        An order's fees so far always equal its exact fees so far rounded up to the quote
        precision: each fill is charged the increase. So no fee is ever undercharged, none is
        negative, and rounding never adds more than one quote unit per order.
        """
        exact = notional * self._config.fee_bps(liquidity) / BPS
        carry = self._fee_carry.get(order.client_order_id, ZERO)
        # The carry can cover a whole fee (rounding then leaves zero, or a negative zero).
        fee = max(instrument.round_fee(exact - carry), ZERO)
        return fee, carry + fee - exact

    def _book(
        self,
        order: Order,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
        liquidity: Liquidity,
        ts_ms: int,
        fills: list[Fill],
        events: list[OrderEventRecord],
    ) -> None:
        cid = order.client_order_id
        updated, record = transition(
            order, OrderEvent(OrderEventKind.FILL, ts_ms, fill_quantity=quantity, fill_price=price)
        )
        self._orders[cid] = updated
        events.append(record)
        count = self._fill_counts.get(cid, 0) + 1
        self._fill_counts[cid] = count
        fills.append(
            Fill(
                FillId(f"{cid}-{count}"),
                cid,
                order.symbol,
                order.side,
                quantity,
                price,
                fee,
                liquidity,
                ts_ms,
            )
        )
        holding = self._holdings.get(order.symbol, ZERO)
        if order.side is Side.BUY:
            cost = quantity * price + fee
            self._cash -= cost
            self._holdings[order.symbol] = holding + quantity
            reserved = self._reserved_cash.get(cid, ZERO)
            worst = self._reserved_worst_price(updated)
            rest = self._buy_reservation(updated, worst) if worst is not None else ZERO
            # The formula bounds what the rest can cost; `reserved - cost` keeps a reservation
            # restored from older data from growing past what was set aside.
            self._reserved_cash[cid] = max(ZERO, min(rest, reserved - cost))
        else:
            self._cash += quantity * price - fee
            self._holdings[order.symbol] = holding - quantity
            self._reserved_quantity[cid] = self._reserved_quantity.get(cid, ZERO) - quantity
        if not updated.status.is_open:
            self._release(cid)

    def _reserved_worst_price(self, order: Order) -> Decimal | None:
        if order.limit_price is not None:
            return order.limit_price
        # A market order is canceled for its rest right after this fill: nothing to keep.
        return None

    def _cancel(
        self,
        client_order_id: ClientOrderId,
        ts_ms: int,
        reason: str,
        events: list[OrderEventRecord],
    ) -> None:
        order, record = transition(
            self._orders[client_order_id], OrderEvent(OrderEventKind.CANCEL, ts_ms, reason=reason)
        )
        self._orders[client_order_id] = order
        events.append(record)
        self._release(client_order_id)

    def _release(self, client_order_id: ClientOrderId) -> None:
        self._reserved_cash.pop(client_order_id, None)
        self._reserved_quantity.pop(client_order_id, None)
        self._fee_carry.pop(client_order_id, None)
        self._takers.discard(client_order_id)
