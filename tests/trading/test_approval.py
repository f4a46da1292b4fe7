"""Risk approvals: a token binds one decision to every field of one order, in one epoch."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.trading.approval import (
    Approval,
    ApprovalError,
    ApprovalProblem,
    SignedState,
    canonical_decimal,
    sign_approval,
    sign_state,
    verify_approval,
    verify_state,
)
from backend.trading.types import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
)

SECRET = "test-secret"
ORDER = OrderRequest(
    ClientOrderId("c-1"),
    Symbol("BTCUSDT"),
    Side.BUY,
    Decimal("1.5"),
    OrderType.LIMIT,
    Decimal("40000.5"),
)


def approve(
    *,
    decision_id: str = "d-1",
    order: OrderRequest = ORDER,
    epoch: int = 3,
    expires_ms: int = 2_000,
) -> Approval:
    return sign_approval(
        SECRET, decision_id=decision_id, order=order, epoch=epoch, expires_ms=expires_ms
    )


def verify(
    approval: Approval | None,
    *,
    order: OrderRequest = ORDER,
    now_ms: int = 0,
    secret: str = SECRET,
    current_epoch: int | None = 3,
    check_expiry: bool = True,
) -> None:
    verify_approval(
        secret,
        approval,
        order=order,
        now_ms=now_ms,
        current_epoch=current_epoch,
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


def test_the_same_values_spelled_differently_verify() -> None:
    verify(
        approve(), order=replace(ORDER, quantity=Decimal("1.50"), limit_price=Decimal("40000.50"))
    )


@pytest.mark.parametrize(
    "changed",
    [
        replace(ORDER, client_order_id=ClientOrderId("c-2")),
        replace(ORDER, symbol=Symbol("ETHUSDT")),
        replace(ORDER, side=Side.SELL),
        replace(ORDER, quantity=Decimal("1.6")),
        replace(ORDER, quantity=Decimal("1.5000000000000000000000000001")),
        replace(ORDER, order_type=OrderType.MARKET, limit_price=None),
        replace(ORDER, limit_price=Decimal(1)),
        replace(ORDER, time_in_force=TimeInForce.IOC),
        replace(ORDER, reduce_only=True),
    ],
    ids=["cid", "symbol", "side", "quantity", "quantity-29-digits", "type", "limit", "tif", "ro"],
)
def test_an_approval_for_any_other_order_is_invalid(changed: OrderRequest) -> None:
    assert problem_of(approve(), order=changed) is ApprovalProblem.INVALID


def test_an_approval_under_another_secret_is_invalid() -> None:
    assert problem_of(approve(), secret="another secret") is ApprovalProblem.INVALID


def test_stretching_the_expiry_or_the_epoch_breaks_the_signature() -> None:
    approval = approve()
    assert problem_of(replace(approval, expires_ms=approval.expires_ms + 60_000)) is (
        ApprovalProblem.INVALID
    )
    assert problem_of(replace(approval, epoch=4), current_epoch=4) is ApprovalProblem.INVALID


def test_a_state_change_revokes_earlier_approvals() -> None:
    assert problem_of(approve(epoch=3), current_epoch=4) is ApprovalProblem.REVOKED
    verify(approve(epoch=4), current_epoch=4)


def test_a_missing_approval_says_where_to_get_one() -> None:
    with pytest.raises(ApprovalError, match="POST /check"):
        verify(None)
    assert problem_of(None) is ApprovalProblem.MISSING


def test_field_boundaries_are_part_of_the_signature() -> None:
    assert (
        approve(decision_id="ab", order=replace(ORDER, client_order_id=ClientOrderId("c"))).token
        != approve(decision_id="a", order=replace(ORDER, client_order_id=ClientOrderId("bc"))).token
    )


def test_a_signed_state_verifies_and_cannot_be_altered() -> None:
    signed = sign_state(SECRET, state="HALTED", epoch=7)
    assert verify_state(SECRET, signed)
    assert not verify_state(SECRET, SignedState("ACTIVE", 7, signed.token))
    assert not verify_state(SECRET, SignedState("HALTED", 8, signed.token))
    assert not verify_state("another secret", signed)


@given(st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10**9), places=8))
def test_canonical_decimal_is_one_exact_spelling_per_value(quantity: Decimal) -> None:
    text = canonical_decimal(quantity)
    assert Decimal(text) == quantity
    assert "E" not in text
    assert canonical_decimal(Decimal(text + "000" if "." in text else text + ".000")) == text


def test_canonical_decimal_never_rounds() -> None:
    long = Decimal("1.0000000000000000000000000001")
    assert canonical_decimal(long) != canonical_decimal(Decimal(1))
    assert canonical_decimal(Decimal("1E+3")) == "1000"
    assert canonical_decimal(Decimal("-0.0")) == "0"
