"""The trading-state gate and the idempotency comparison as plain logic, with a fake clock."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from backend.trading.approval import SignedState, sign_state
from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Side, Symbol, TimeInForce
from microservices.contracts.risk_safety import SignedStatePublic
from microservices.execution.desk import conflicting_fields
from microservices.execution.riskstate import Adopted, Outcome, RiskStateGate

SECRET = "test-secret"


def signed(state: str, epoch: int) -> SignedState:
    return sign_state(SECRET, state=state, epoch=epoch)


def adopt(gate: RiskStateGate, state: str, epoch: int, now_s: float) -> Outcome:
    outcome = gate.consider(signed(state, epoch), now_s=now_s)
    if outcome is Outcome.ADOPTED:
        gate.adopt(Adopted(state, epoch, "push", "", 0, 0), now_s=now_s)
    return outcome


def test_the_gate_is_closed_until_a_state_and_after_its_lease() -> None:
    gate = RiskStateGate(lease_ms=2000)
    assert gate.blocker(0.0) is not None and gate.refusal_label(0.0) == "UNKNOWN"
    assert adopt(gate, "ACTIVE", 3, now_s=10.0) is Outcome.ADOPTED
    assert gate.blocker(11.999) is None
    assert "past its 2000 ms lease" in (gate.blocker(12.001) or "")
    assert adopt(gate, "ACTIVE", 3, now_s=12.5) is Outcome.CURRENT  # renews the lease
    assert gate.blocker(14.0) is None


def test_only_a_higher_epoch_is_adopted_and_a_conflict_renews_nothing() -> None:
    gate = RiskStateGate(lease_ms=1000)
    adopt(gate, "HALTED", 5, now_s=0.0)
    assert adopt(gate, "ACTIVE", 4, now_s=0.5) is Outcome.STALE
    assert adopt(gate, "ACTIVE", 5, now_s=0.9) is Outcome.CONFLICT
    assert gate.lease_expired(1.1)  # neither renewed the lease taken at 0.0
    assert (gate.state, gate.epoch) == ("HALTED", 5)
    assert adopt(gate, "ACTIVE", 6, now_s=1.2) is Outcome.ADOPTED
    assert gate.blocker(1.3) is None


def test_an_announced_halt_closes_at_once_and_an_announced_resume_opens_nothing() -> None:
    gate = RiskStateGate(lease_ms=1000)
    adopt(gate, "ACTIVE", 1, now_s=0.0)
    gate.announce(signed("HALTED", 2))
    assert "HALTED (epoch 2)" in (gate.blocker(0.1) or "")
    assert gate.epoch == 2  # approvals of epoch 1 are revoked from now on
    adopt(gate, "HALTED", 2, now_s=0.2)
    assert gate.closing is None
    gate.announce(signed("ACTIVE", 3))
    assert gate.blocker(0.3) is not None  # still HALTED until the resume is adopted


def test_a_state_without_epoch_or_token_is_not_verifiable() -> None:
    for body in (
        {"state": "ACTIVE"},
        {"state": "ACTIVE", "epoch": 1},
        {"state": "ACTIVE", "epoch": True, "state_token": "t"},
        {"state": "ACTIVE", "epoch": "1", "state_token": "t"},
        [],
    ):
        try:
            SignedStatePublic.model_validate(body)
        except ValueError:
            continue
        raise AssertionError(f"accepted {body}")
    answer = {"state": "HALTED", "epoch": 2, "state_token": "t", "reason": ""}
    assert SignedStatePublic.model_validate(answer).to_signed_state() == SignedState(
        "HALTED", 2, "t"
    )


decimals = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal(10**9), places=6, allow_nan=False
)


@given(quantity=decimals, price=decimals, zeros=st.integers(0, 6))
def test_the_same_order_spelled_differently_never_conflicts(
    quantity: Decimal, price: Decimal, zeros: int
) -> None:
    order = OrderRequest(
        ClientOrderId("c"),
        Symbol("BTCUSDT"),
        Side.BUY,
        quantity,
        OrderType.LIMIT,
        price,
        TimeInForce.GTC,
        False,
    )
    respelled = replace(
        order,
        quantity=quantity.quantize(Decimal(1).scaleb(-6 - zeros)),
        limit_price=price.quantize(Decimal(1).scaleb(-6 - zeros)),
    )
    assert conflicting_fields(order, respelled) == []
    bigger = replace(order, quantity=quantity + Decimal("0.000001"))
    assert conflicting_fields(order, bigger) == ["quantity"]
