"""Risk approvals: a token binds one decision to one order, until it expires."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.trading.approval import (
    Approval,
    ApprovalError,
    ApprovalProblem,
    canonical_quantity,
    sign_approval,
    verify_approval,
)

SECRET = "test-secret"


def approve(
    *,
    decision_id: str = "d-1",
    client_order_id: str = "c-1",
    quantity: Decimal = Decimal("1.5"),
    expires_ms: int = 2_000,
) -> Approval:
    return sign_approval(
        SECRET,
        decision_id=decision_id,
        client_order_id=client_order_id,
        symbol="BTCUSDT",
        side="BUY",
        quantity=quantity,
        expires_ms=expires_ms,
    )


def verify(
    approval: Approval | None,
    *,
    now_ms: int = 0,
    secret: str = SECRET,
    client_order_id: str = "c-1",
    symbol: str = "BTCUSDT",
    side: str = "BUY",
    quantity: Decimal = Decimal("1.5"),
    check_expiry: bool = True,
) -> None:
    verify_approval(
        secret,
        approval,
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,
        quantity=quantity,
        now_ms=now_ms,
        check_expiry=check_expiry,
    )


def problem_of(approval: Approval | None, **kwargs: object) -> ApprovalProblem:
    with pytest.raises(ApprovalError) as caught:
        verify(approval, **kwargs)  # type: ignore[arg-type]
    return caught.value.problem


def test_an_approval_verifies_for_its_own_order_until_it_expires() -> None:
    verify(approve(), now_ms=1_999)
    assert problem_of(approve(), now_ms=2_000) is ApprovalProblem.EXPIRED


def test_a_retry_of_a_placed_order_may_skip_the_expiry() -> None:
    verify(approve(), now_ms=9_999, check_expiry=False)


def test_the_same_quantity_spelled_differently_verifies() -> None:
    verify(approve(quantity=Decimal("1.50")))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_order_id", "c-2"),
        ("symbol", "ETHUSDT"),
        ("side", "SELL"),
        ("quantity", Decimal("1.6")),
        ("secret", "another secret"),
    ],
)
def test_an_approval_for_another_order_or_secret_is_invalid(field: str, value: object) -> None:
    assert problem_of(approve(), **{field: value}) is ApprovalProblem.INVALID


def test_stretching_the_expiry_breaks_the_signature() -> None:
    approval = approve()
    stretched = Approval(approval.decision_id, approval.token, approval.expires_ms + 60_000)
    assert problem_of(stretched) is ApprovalProblem.INVALID


def test_a_missing_approval_says_where_to_get_one() -> None:
    with pytest.raises(ApprovalError, match="POST /check"):
        verify(None)
    assert problem_of(None) is ApprovalProblem.MISSING


def test_field_boundaries_are_part_of_the_signature() -> None:
    assert (
        approve(decision_id="ab", client_order_id="c").token
        != approve(decision_id="a", client_order_id="bc").token
    )


@given(st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10**9), places=8))
def test_canonical_quantity_is_one_spelling_per_value(quantity: Decimal) -> None:
    text = canonical_quantity(quantity)
    assert Decimal(text) == quantity
    assert "E" not in text
    assert canonical_quantity(Decimal(text + "000" if "." in text else text + ".000")) == text
