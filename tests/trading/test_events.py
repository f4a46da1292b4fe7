"""The trading events map to and from the domain values they announce, in the domain's types."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from types import SimpleNamespace

from backend.trading.events import EVENT_TYPES, OrderFilled, OrderSubmitted
from backend.trading.orders import create_order
from backend.trading.types import Fill, Liquidity, Side, field_values
from tests.support.factories import D, fill, request


def test_a_fill_and_its_announcement_map_to_each_other() -> None:
    sold = replace(fill(Side.SELL, "0.25", "40000.5", fee="1.25"), liquidity=Liquidity.MAKER)
    event = OrderFilled.of(sold, leaves_quantity=D("0.75"))
    assert (event.side, event.liquidity, event.leaves_quantity) == (
        Side.SELL,
        Liquidity.MAKER,
        D("0.75"),
    )
    assert event.to_fill() == sold
    # On the wire the enums are their names and the amounts exact decimal text.
    wire = json.loads(event.model_dump_json())
    assert (wire["side"], wire["liquidity"], wire["price"]) == ("SELL", "MAKER", "40000.5")
    assert OrderFilled.model_validate(wire) == event


def test_a_fill_is_stored_and_read_back_unchanged() -> None:
    bought = fill(Side.BUY, "0.1", "100.11", fee="0.010011", ts_ms=1_733_000_000_123)
    row = SimpleNamespace(**bought.columns())
    assert (row.side, row.liquidity) == ("BUY", "TAKER")
    assert Fill.from_stored(row) == bought
    # A row from before the ledger kept liquidity reads with the stand-in given.
    old = SimpleNamespace(**{**bought.columns(), "liquidity": None})
    assert Fill.from_stored(old, liquidity=Liquidity.MAKER).liquidity is Liquidity.MAKER


def test_an_order_request_is_announced_and_kept_field_for_field() -> None:
    limit = request(Side.BUY, "2", limit="99.5", reduce_only=True)
    assert OrderSubmitted.of(limit).model_dump(exclude={"signal_id"}) == {
        "client_order_id": limit.client_order_id,
        "symbol": limit.symbol,
        "side": limit.side,
        "order_type": limit.order_type,
        "quantity": limit.quantity,
        "limit_price": limit.limit_price,
        "time_in_force": limit.time_in_force,
        "reduce_only": True,
    }
    order, _ = create_order(limit, ts_ms=5)
    assert order.request == limit


def test_every_event_type_is_its_own_stream_and_model() -> None:
    assert len(set(EVENT_TYPES.values())) == len(EVENT_TYPES)
    assert all(model.schema_version == 1 for model in EVENT_TYPES.values())


def test_field_values_are_the_fields_of_a_flat_value_without_copying_them() -> None:
    sold = fill(Side.SELL, "0.25", "40000.5", fee="1.25")
    wanted = request(Side.BUY, "0.5")
    assert field_values(sold) == asdict(sold)
    assert field_values(wanted) == asdict(wanted)
    assert field_values(sold)["price"] is sold.price
