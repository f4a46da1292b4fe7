"""Paper venue: fills orders against quotes with slippage, fees, partial fills and reservations."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

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


class UnknownOrder(KeyError):
    """Raised when a client order id is not known to the venue."""


@dataclass(frozen=True, slots=True)
class VenueConfig:
    """Fee and fill model. Slippage grows with order size over the quote's volume, up to a cap."""

    taker_fee_bps: Decimal = Decimal(10)
    maker_fee_bps: Decimal = Decimal(2)
    impact_bps: Decimal = Decimal(50)
    max_slippage_bps: Decimal = Decimal(25)
    price_increment: Decimal = Decimal("0.01")
    touch_fill_probability: float = 0.5

    def __post_init__(self) -> None:
        if min(self.taker_fee_bps, self.maker_fee_bps, self.impact_bps) < ZERO:
            raise ValueError("fees and impact must not be negative")
        if self.max_slippage_bps < ZERO or self.price_increment <= ZERO:
            raise ValueError("max_slippage_bps must be >= 0 and price_increment > 0")
        if not 0.0 <= self.touch_fill_probability <= 1.0:
            raise ValueError("touch_fill_probability must be in [0, 1]")


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

    Buys reserve cash (at the worst price the order could pay, fees included) and sells reserve
    holdings when accepted; the reservation is released as the order fills or is canceled.
    Randomness (filling a limit order whose price is merely touched) comes from a seeded RNG.
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
        self._quotes: dict[Symbol, Quote] = {}
        self._volume_used: dict[Symbol, Decimal] = {}

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

        Fill ids continue where they stopped. The RNG starts again from `seed`.
        """
        venue = cls(cash=initial_cash, config=config, seed=seed)
        for fill in fills:
            holding = venue._holdings.get(fill.symbol, ZERO)
            if fill.side is Side.BUY:
                venue._cash -= fill.quantity * fill.price + fill.fee
                venue._holdings[fill.symbol] = holding + fill.quantity
            else:
                venue._cash += fill.quantity * fill.price - fill.fee
                venue._holdings[fill.symbol] = holding - fill.quantity
            count = venue._fill_counts.get(fill.client_order_id, 0)
            venue._fill_counts[fill.client_order_id] = count + 1
        for working in open_orders:
            order = working.order
            if not order.status.is_open:
                raise ValueError(f"order {order.client_order_id} is {order.status.value}, not open")
            cid = order.client_order_id
            venue._orders[cid] = order
            if order.side is Side.SELL:
                venue._reserved_quantity[cid] = order.remaining_quantity
            else:
                reserved = working.reserved_cash
                if reserved is None:
                    reserved = order.remaining_quantity * venue._worst_price_of(order)
                venue._reserved_cash[cid] = reserved
        for quote in quotes:
            venue._quotes[quote.symbol] = quote
        return venue

    def _worst_price_of(self, order: Order) -> Decimal:
        if order.limit_price is not None:
            price = order.limit_price
        else:
            average = order.average_fill_price or ZERO
            price = average * (1 + self._config.max_slippage_bps / BPS)
        return price * self._fee_factor()

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
        """Quantity of `symbol` a new sell order may reserve."""
        reserved = sum(
            (q for cid, q in self._reserved_quantity.items() if self._orders[cid].symbol == symbol),
            ZERO,
        )
        return self.holding(symbol) - reserved

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

    def submit(self, request: OrderRequest, now_ms: int) -> VenueReport:
        """Accept (or reject) an order and fill what the current quote allows.

        Submitting a known client order id again changes nothing and returns the existing
        order with `duplicate=True`.
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

        order, record = transition(order, OrderEvent(OrderEventKind.ACCEPT, now_ms))
        events.append(record)
        self._orders[order.client_order_id] = order
        if reserve_cash > ZERO:
            self._reserved_cash[order.client_order_id] = reserve_cash
        if reserve_quantity > ZERO:
            self._reserved_quantity[order.client_order_id] = reserve_quantity

        fills: list[Fill] = []
        quote = self._quotes.get(request.symbol)
        if quote is not None:
            self._match(
                order.client_order_id, quote, now_ms, aggressive=True, fills=fills, events=events
            )
        order = self._orders[order.client_order_id]
        if order.time_in_force is TimeInForce.IOC and order.status.is_open:
            self._cancel(order.client_order_id, now_ms, "IOC remainder", events)
        return VenueReport(self._orders[order.client_order_id], tuple(fills), tuple(events))

    def on_quote(self, quote: Quote) -> list[VenueReport]:
        """Take a new quote and fill the symbol's working orders it allows, oldest first."""
        self._quotes[quote.symbol] = quote
        self._volume_used[quote.symbol] = ZERO
        reports: list[VenueReport] = []
        for order in self.open_orders(quote.symbol):
            fills: list[Fill] = []
            events: list[OrderEventRecord] = []
            self._match(
                order.client_order_id,
                quote,
                quote.ts_ms,
                aggressive=False,
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

    def _admission(self, request: OrderRequest) -> tuple[str, Decimal, Decimal]:
        if request.quantity <= ZERO:
            return f"quantity must be positive, got {request.quantity}", ZERO, ZERO
        if request.order_type is OrderType.LIMIT:
            if request.limit_price is None or request.limit_price <= ZERO:
                return "limit order needs a positive limit price", ZERO, ZERO
        elif request.limit_price is not None:
            return "market order must not carry a limit price", ZERO, ZERO
        quote = self._quotes.get(request.symbol)
        if request.order_type is OrderType.MARKET and quote is None:
            return f"no quote for {request.symbol}", ZERO, ZERO
        if request.side is Side.SELL:
            available = self.available_quantity(request.symbol)
            if request.quantity > available:
                problem = (
                    f"insufficient {request.symbol}: need {request.quantity}, have {available}"
                )
                return problem, ZERO, ZERO
            return "", ZERO, request.quantity
        needed = request.quantity * self._worst_buy_price(request, quote) * self._fee_factor()
        if needed > self.available_cash:
            return (
                f"insufficient balance: need {needed}, available {self.available_cash}",
                ZERO,
                ZERO,
            )
        return "", needed, ZERO

    def _worst_buy_price(self, request: OrderRequest, quote: Quote | None) -> Decimal:
        if request.limit_price is not None:
            return request.limit_price
        assert quote is not None  # admission rejects market orders without a quote
        return quote.ask * (1 + self._config.max_slippage_bps / BPS)

    def _fee_factor(self) -> Decimal:
        return 1 + max(self._config.taker_fee_bps, self._config.maker_fee_bps) / BPS

    def _match(
        self,
        client_order_id: ClientOrderId,
        quote: Quote,
        ts_ms: int,
        *,
        aggressive: bool,
        fills: list[Fill],
        events: list[OrderEventRecord],
    ) -> None:
        order = self._orders[client_order_id]
        touch = quote.ask if order.side is Side.BUY else quote.bid
        liquidity = Liquidity.TAKER
        if order.order_type is OrderType.LIMIT:
            assert order.limit_price is not None
            edge = (order.limit_price - touch) * order.side.sign
            if edge < ZERO:
                return
            if not aggressive:
                # A resting order that is only touched may or may not be reached in the queue.
                if edge == ZERO and self._rng.random() >= self._config.touch_fill_probability:
                    return
                liquidity = Liquidity.MAKER
        available = quote.volume - self._volume_used.get(quote.symbol, ZERO)
        quantity = min(order.remaining_quantity, available)
        if quantity <= ZERO:
            return
        price = self._fill_price(order, quote, quantity, liquidity)
        fee_bps = (
            self._config.maker_fee_bps
            if liquidity is Liquidity.MAKER
            else self._config.taker_fee_bps
        )
        fee = quantity * price * fee_bps / BPS
        if order.side is Side.BUY:
            own = self._reserved_cash.get(client_order_id, ZERO)
            spendable = self.available_cash + own
            if quantity * price + fee > spendable:
                self._cancel(client_order_id, ts_ms, "insufficient balance at fill", events)
                return
        self._book(order, quote, quantity, price, fee, liquidity, ts_ms, fills, events)

    def _fill_price(
        self, order: Order, quote: Quote, quantity: Decimal, liquidity: Liquidity
    ) -> Decimal:
        if liquidity is Liquidity.MAKER:
            assert order.limit_price is not None
            return order.limit_price
        slippage_bps = ZERO
        if quote.volume > ZERO:
            slippage_bps = min(
                self._config.max_slippage_bps, self._config.impact_bps * quantity / quote.volume
            )
        factor = 1 + slippage_bps / BPS * order.side.sign
        rounding = ROUND_CEILING if order.side is Side.BUY else ROUND_FLOOR
        touch = quote.ask if order.side is Side.BUY else quote.bid
        increment = self._config.price_increment
        price = (touch * factor / increment).to_integral_value(rounding=rounding) * increment
        if order.limit_price is not None:
            # Slippage never takes a marketable limit order past its own limit.
            price = (
                min(price, order.limit_price)
                if order.side is Side.BUY
                else max(price, order.limit_price)
            )
        return price

    def _book(
        self,
        order: Order,
        quote: Quote,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
        liquidity: Liquidity,
        ts_ms: int,
        fills: list[Fill],
        events: list[OrderEventRecord],
    ) -> None:
        cid = order.client_order_id
        remaining_before = order.remaining_quantity
        updated, record = transition(
            order, OrderEvent(OrderEventKind.FILL, ts_ms, fill_quantity=quantity, fill_price=price)
        )
        self._orders[cid] = updated
        events.append(record)
        self._volume_used[quote.symbol] = self._volume_used.get(quote.symbol, ZERO) + quantity
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
            self._cash -= quantity * price + fee
            self._holdings[order.symbol] = holding + quantity
            reserved = self._reserved_cash.get(cid, ZERO)
            self._reserved_cash[cid] = reserved - reserved * quantity / remaining_before
        else:
            self._cash += quantity * price - fee
            self._holdings[order.symbol] = holding - quantity
            self._reserved_quantity[cid] = self._reserved_quantity.get(cid, ZERO) - quantity
        if not updated.status.is_open:
            self._release(cid)

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
