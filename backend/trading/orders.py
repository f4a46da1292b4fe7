"""Order lifecycle as an explicit state machine, and deterministic client order ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from enum import StrEnum

from backend.trading.types import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
    field_values,
)

ZERO = Decimal(0)
CLIENT_ORDER_ID_PREFIX = "qt-"


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    NEW = "NEW"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        """True once nothing more can happen to the order."""
        return not ALLOWED_TRANSITIONS[self]

    @property
    def is_open(self) -> bool:
        """True while the order can still fill."""
        return self in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


ALLOWED_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.NEW: frozenset({OrderStatus.ACCEPTED, OrderStatus.REJECTED, OrderStatus.CANCELED}),
    OrderStatus.ACCEPTED: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


class OrderEventKind(StrEnum):
    """What happened to an order."""

    CREATED = "CREATED"
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    FILL = "FILL"
    CANCEL = "CANCEL"
    EXPIRE = "EXPIRE"


_TARGET: Mapping[OrderEventKind, OrderStatus] = {
    OrderEventKind.ACCEPT: OrderStatus.ACCEPTED,
    OrderEventKind.REJECT: OrderStatus.REJECTED,
    OrderEventKind.CANCEL: OrderStatus.CANCELED,
    OrderEventKind.EXPIRE: OrderStatus.EXPIRED,
}


class InvalidTransition(ValueError):
    """Raised when an event does not fit the order's current status."""

    def __init__(
        self, client_order_id: ClientOrderId, from_status: OrderStatus, to_status: OrderStatus
    ) -> None:
        super().__init__(f"order {client_order_id}: cannot move from {from_status} to {to_status}")
        self.client_order_id = client_order_id
        self.from_status = from_status
        self.to_status = to_status


@dataclass(frozen=True, slots=True)
class Order:
    """An order and its progress. Immutable: every transition returns a new Order."""

    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None
    time_in_force: TimeInForce
    reduce_only: bool
    status: OrderStatus
    filled_quantity: Decimal
    average_fill_price: Decimal | None
    created_ms: int
    updated_ms: int
    sequence: int

    @property
    def remaining_quantity(self) -> Decimal:
        """Quantity still to fill."""
        return self.quantity - self.filled_quantity

    @property
    def request(self) -> OrderRequest:
        """The intent this order was created from."""
        return OrderRequest(**{f.name: getattr(self, f.name) for f in fields(OrderRequest)})


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An input to `transition`. FILL events carry the fill's quantity and price."""

    kind: OrderEventKind
    ts_ms: int
    fill_quantity: Decimal | None = None
    fill_price: Decimal | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderEventRecord:
    """A persisted fact: one transition of one order. (client_order_id, sequence) is unique."""

    client_order_id: ClientOrderId
    sequence: int
    kind: OrderEventKind
    from_status: OrderStatus | None
    to_status: OrderStatus
    ts_ms: int
    filled_quantity: Decimal
    fill_quantity: Decimal | None
    fill_price: Decimal | None
    reason: str


def create_order(request: OrderRequest, ts_ms: int) -> tuple[Order, OrderEventRecord]:
    """A NEW order for `request`, and the record of its creation."""
    order = Order(
        **field_values(request),
        status=OrderStatus.NEW,
        filled_quantity=ZERO,
        average_fill_price=None,
        created_ms=ts_ms,
        updated_ms=ts_ms,
        sequence=0,
    )
    record = OrderEventRecord(
        order.client_order_id,
        0,
        OrderEventKind.CREATED,
        None,
        OrderStatus.NEW,
        ts_ms,
        ZERO,
        None,
        None,
        "",
    )
    return order, record


def transition(order: Order, event: OrderEvent) -> tuple[Order, OrderEventRecord]:
    """Apply `event` to `order`; raise InvalidTransition if the table forbids it."""
    filled = order.filled_quantity
    average = order.average_fill_price
    if event.kind is OrderEventKind.FILL:
        quantity, price = event.fill_quantity, event.fill_price
        if quantity is None or price is None or quantity <= ZERO or price <= ZERO:
            raise ValueError("a FILL event needs a positive fill_quantity and fill_price")
        filled = order.filled_quantity + quantity
        if filled > order.quantity:
            raise ValueError(
                f"order {order.client_order_id}: fill of {quantity} overfills "
                f"{order.remaining_quantity} remaining"
            )
        previous_value = (average or ZERO) * order.filled_quantity
        average = (previous_value + quantity * price) / filled
        target = OrderStatus.FILLED if filled == order.quantity else OrderStatus.PARTIALLY_FILLED
    elif event.kind is OrderEventKind.CREATED:
        raise InvalidTransition(order.client_order_id, order.status, OrderStatus.NEW)
    else:
        target = _TARGET[event.kind]
    if target not in ALLOWED_TRANSITIONS[order.status]:
        raise InvalidTransition(order.client_order_id, order.status, target)
    updated = replace(
        order,
        status=target,
        filled_quantity=filled,
        average_fill_price=average,
        updated_ms=event.ts_ms,
        sequence=order.sequence + 1,
    )
    record = OrderEventRecord(
        order.client_order_id,
        updated.sequence,
        event.kind,
        order.status,
        target,
        event.ts_ms,
        filled,
        event.fill_quantity,
        event.fill_price,
        event.reason,
    )
    return updated, record


def client_order_id_for(*parts: str | int | Decimal) -> ClientOrderId:
    """A stable id derived from what identifies the intent, e.g. (signal_id, symbol, side, ts_ms).

    The same parts always give the same id, so a retried submission is recognised as a
    duplicate by the venue instead of trading twice.
    """
    if not parts:
        raise ValueError("at least one part is required")
    # JSON keeps the boundaries between parts, so ("ab", "c") and ("a", "bc") differ.
    encoded = json.dumps([str(part) for part in parts], separators=(",", ":")).encode()
    return ClientOrderId(CLIENT_ORDER_ID_PREFIX + hashlib.sha256(encoded).hexdigest()[:24])
