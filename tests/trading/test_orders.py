from decimal import Decimal

import pytest

from backend.trading.orders import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    Order,
    OrderEvent,
    OrderEventKind,
    OrderStatus,
    client_order_id_for,
    create_order,
    transition,
)
from backend.trading.types import Side
from tests.support.factories import BTC, request

S = OrderStatus
D = Decimal


def new_order(quantity: str = "2") -> Order:
    order, _ = create_order(request(Side.BUY, quantity, limit="100"), ts_ms=1)
    return order


def accept(order: Order) -> Order:
    return transition(order, OrderEvent(OrderEventKind.ACCEPT, 2))[0]


def fill(order: Order, quantity: str, price: str = "100") -> Order:
    event = OrderEvent(OrderEventKind.FILL, 3, Decimal(quantity), Decimal(price))
    return transition(order, event)[0]


def in_status(status: OrderStatus) -> Order:
    """An order driven through valid events to `status`."""
    order = new_order()
    if status is S.NEW:
        return order
    if status is S.REJECTED:
        return transition(order, OrderEvent(OrderEventKind.REJECT, 2))[0]
    order = accept(order)
    if status is S.PARTIALLY_FILLED:
        return fill(order, "1")
    if status is S.FILLED:
        return fill(order, "2")
    if status is S.CANCELED:
        return transition(order, OrderEvent(OrderEventKind.CANCEL, 3))[0]
    if status is S.EXPIRED:
        return transition(order, OrderEvent(OrderEventKind.EXPIRE, 3))[0]
    return order


def test_new_order_starts_new_with_a_creation_record() -> None:
    order, record = create_order(request(Side.SELL, "1", cid="qt-a"), ts_ms=5)
    assert order.status is S.NEW and order.filled_quantity == 0 and order.sequence == 0
    assert (record.kind, record.from_status, record.to_status) == (
        OrderEventKind.CREATED,
        None,
        S.NEW,
    )


def test_full_lifecycle_through_partial_fills() -> None:
    order = accept(new_order("3"))
    order = fill(order, "1", "100")
    assert order.status is S.PARTIALLY_FILLED
    order = fill(order, "1", "103")
    assert order.status is S.PARTIALLY_FILLED
    order = fill(order, "1", "103")
    assert order.status is S.FILLED
    assert order.filled_quantity == 3 and order.remaining_quantity == 0
    assert order.average_fill_price == Decimal(102)
    assert order.sequence == 4


def test_transition_emits_a_record_for_persistence() -> None:
    order = accept(new_order())
    updated, record = transition(
        order, OrderEvent(OrderEventKind.FILL, 9, Decimal(1), Decimal(101), reason="venue")
    )
    assert record.client_order_id == order.client_order_id
    assert record.sequence == updated.sequence == 2
    assert (record.from_status, record.to_status) == (S.ACCEPTED, S.PARTIALLY_FILLED)
    assert (record.fill_quantity, record.fill_price, record.filled_quantity) == (D(1), D(101), D(1))
    assert record.ts_ms == updated.updated_ms == 9


VALID = [
    (S.NEW, OrderEventKind.ACCEPT, S.ACCEPTED),
    (S.NEW, OrderEventKind.REJECT, S.REJECTED),
    (S.NEW, OrderEventKind.CANCEL, S.CANCELED),
    (S.ACCEPTED, OrderEventKind.CANCEL, S.CANCELED),
    (S.ACCEPTED, OrderEventKind.EXPIRE, S.EXPIRED),
    (S.PARTIALLY_FILLED, OrderEventKind.CANCEL, S.CANCELED),
    (S.PARTIALLY_FILLED, OrderEventKind.EXPIRE, S.EXPIRED),
]


@pytest.mark.parametrize(("start", "kind", "end"), VALID)
def test_valid_transition(start: OrderStatus, kind: OrderEventKind, end: OrderStatus) -> None:
    order, record = transition(in_status(start), OrderEvent(kind, 10))
    assert order.status is end
    assert (record.from_status, record.to_status) == (start, end)


@pytest.mark.parametrize(
    ("start", "quantity", "end"),
    [
        (S.ACCEPTED, "1", S.PARTIALLY_FILLED),
        (S.ACCEPTED, "2", S.FILLED),
        (S.PARTIALLY_FILLED, "0.5", S.PARTIALLY_FILLED),
        (S.PARTIALLY_FILLED, "1", S.FILLED),
    ],
)
def test_valid_fill(start: OrderStatus, quantity: str, end: OrderStatus) -> None:
    assert fill(in_status(start), quantity).status is end


NON_FILL_EVENTS = [
    OrderEventKind.ACCEPT,
    OrderEventKind.REJECT,
    OrderEventKind.CANCEL,
    OrderEventKind.EXPIRE,
]
INVALID = [
    (start, kind)
    for start in S
    for kind in NON_FILL_EVENTS
    if (start, kind) not in {(s, k) for s, k, _ in VALID}
]


@pytest.mark.parametrize(("start", "kind"), INVALID)
def test_invalid_transition_names_from_and_to(start: OrderStatus, kind: OrderEventKind) -> None:
    order = in_status(start)
    with pytest.raises(InvalidTransition, match=f"from {start} to ") as raised:
        transition(order, OrderEvent(kind, 10))
    assert raised.value.from_status is start


@pytest.mark.parametrize("start", [S.NEW, S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED])
def test_fill_is_invalid_unless_the_order_is_working(start: OrderStatus) -> None:
    order = in_status(start)
    quantity = "1" if order.remaining_quantity > 0 else "0.1"
    with pytest.raises((InvalidTransition, ValueError)):
        fill(order, quantity)


def test_created_event_cannot_be_replayed_onto_an_order() -> None:
    with pytest.raises(InvalidTransition):
        transition(new_order(), OrderEvent(OrderEventKind.CREATED, 2))


def test_overfill_is_rejected() -> None:
    with pytest.raises(ValueError, match="overfills"):
        fill(accept(new_order("1")), "1.5")


def test_fill_without_quantity_or_price_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        transition(accept(new_order()), OrderEvent(OrderEventKind.FILL, 3))


def test_terminal_statuses_allow_nothing() -> None:
    terminal = {s for s in S if s.is_terminal}
    assert terminal == {S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED}
    assert all(not ALLOWED_TRANSITIONS[s] for s in terminal)


def test_client_order_id_is_stable_and_prefixed() -> None:
    first = client_order_id_for("sig-1", BTC, Side.BUY, 1_700_000_000_000)
    assert first == client_order_id_for("sig-1", BTC, Side.BUY, 1_700_000_000_000)
    assert first.startswith("qt-") and len(first) == 3 + 24


def test_client_order_id_changes_with_any_part() -> None:
    base = client_order_id_for("sig-1", BTC, Side.BUY, 1)
    assert base != client_order_id_for("sig-2", BTC, Side.BUY, 1)
    assert base != client_order_id_for("sig-1", BTC, Side.SELL, 1)
    assert base != client_order_id_for("sig-1", BTC, Side.BUY, 2)


def test_client_order_id_keeps_part_boundaries() -> None:
    assert client_order_id_for("ab", "c") != client_order_id_for("a", "bc")
