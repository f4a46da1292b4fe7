from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.sizing import SizeConstraint, SizingParams, size_order

PARAMS = SizingParams(
    equity_fraction=Decimal("0.1"),
    max_notional=Decimal(5_000),
    max_quantity=Decimal(2),
    lot_size=Decimal("0.001"),
    min_notional=Decimal(10),
)


def test_max_quantity_caps_the_size() -> None:
    # 10_000 * 0.1 * 0.5 = 500 notional = 5 units at 100, but max quantity 2 binds.
    decision = size_order(Decimal(10_000), Decimal(100), 0.5, PARAMS)
    assert decision.quantity == Decimal(2)
    assert decision.constraint is SizeConstraint.MAX_QUANTITY


def test_size_below_caps_uses_the_fraction() -> None:
    decision = size_order(Decimal(10_000), Decimal(1_000), Decimal("0.8"), PARAMS)
    assert decision == size_order(Decimal(10_000), Decimal(1_000), 0.8, PARAMS)
    assert decision.quantity == Decimal("0.8")
    assert decision.constraint is SizeConstraint.EQUITY_FRACTION


def test_max_notional_caps_the_size() -> None:
    decision = size_order(Decimal(1_000_000), Decimal(10_000), 1.0, PARAMS)
    assert decision.quantity == Decimal("0.5")
    assert decision.constraint is SizeConstraint.MAX_NOTIONAL


def test_size_is_rounded_down_to_the_lot() -> None:
    decision = size_order(Decimal(10_000), Decimal(3_000), 1.0, PARAMS)
    assert decision.quantity == Decimal("0.333")


def test_zero_when_below_min_notional() -> None:
    decision = size_order(Decimal(100), Decimal(100), 0.5, PARAMS)
    assert decision.quantity == 0
    assert decision.constraint is SizeConstraint.BELOW_MIN_NOTIONAL


def test_zero_without_equity() -> None:
    assert size_order(Decimal(-5), Decimal(100), 1.0, PARAMS).constraint is SizeConstraint.NO_EQUITY


@pytest.mark.parametrize("confidence", [-0.1, 1.5])
def test_confidence_outside_zero_one_is_rejected(confidence: float) -> None:
    with pytest.raises(ValueError):
        size_order(Decimal(1_000), Decimal(100), confidence, PARAMS)


@settings(max_examples=200, deadline=None)
@given(
    equity=st.decimals(min_value=0, max_value=10**7, places=2),
    price=st.decimals(min_value="0.01", max_value=10**5, places=2),
    confidence=st.floats(min_value=0, max_value=1),
)
def test_size_never_breaks_a_limit(equity: Decimal, price: Decimal, confidence: float) -> None:
    decision = size_order(equity, price, confidence, PARAMS)
    assert decision.quantity >= 0
    assert decision.quantity <= PARAMS.max_quantity
    assert decision.notional <= PARAMS.max_notional
    assert decision.notional <= equity * PARAMS.equity_fraction
    assert decision.quantity % PARAMS.lot_size == 0
    assert decision.quantity == 0 or decision.notional >= PARAMS.min_notional
