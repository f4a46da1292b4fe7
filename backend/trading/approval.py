"""Risk approvals and the signed trading state, both HMAC-SHA256 with `RISK_APPROVAL_SECRET`.

An approval binds one decision to every field of the order that risk-safety judged
(client order id, symbol, side, quantity, type, limit price, time in force, reduce-only),
to the trading-state *epoch* it was issued in, and to an expiry. Execution verifies it
offline and refuses it once it knows of a later epoch: every state change (the kill switch
above all) increments the epoch, so a halt voids every approval issued before it.

A signed state is how execution learns the trading state from risk-safety (pushed on every
change, polled as a lease): only the holder of the secret can tell execution to resume, and
an old signed state cannot be replayed because execution never moves to a lower epoch.

`DEVELOPMENT_SECRET` is the default for tests and for a service started on its own; `make
run` generates a random secret per installation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from .types import OrderRequest

DEVELOPMENT_SECRET = "quantum-trader-development-approval-secret-change-me"


class ApprovalProblem(StrEnum):
    """Why an approval was refused."""

    MISSING = "MISSING"
    INVALID = "INVALID"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class ApprovalError(ValueError):
    """An order's approval cannot be accepted; `problem` says which check failed."""

    def __init__(self, problem: ApprovalProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Approval:
    """What risk-safety hands back with an approved decision, and execution requires."""

    decision_id: str
    token: str
    expires_ms: int
    epoch: int = 0


def canonical_decimal(value: Decimal) -> str:
    """One exact spelling per value ("1.50" and "1.5" sign the same), never rounded.

    `Decimal.normalize()` would round to the context's 28 digits, so that an approval for
    `1` also verified `1.0000000000000000000000000001`; stripping zeros by hand does not.
    """
    if not value.is_finite():
        raise ValueError(f"cannot sign a non-finite value: {value}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


canonical_quantity = canonical_decimal


def _hmac(secret: str, fields: list[object]) -> str:
    # JSON keeps field boundaries: ("ab", "c") and ("a", "bc") sign differently.
    message = json.dumps(fields, separators=(",", ":")).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def order_fields(order: OrderRequest) -> list[object]:
    """Every field of an order that risk-safety decides on, canonically spelled."""
    return [
        order.client_order_id,
        order.symbol,
        order.side.value,
        canonical_decimal(order.quantity),
        order.order_type.value,
        canonical_decimal(order.limit_price) if order.limit_price is not None else None,
        order.time_in_force.value,
        order.reduce_only,
    ]


def sign_approval(
    secret: str, *, decision_id: str, order: OrderRequest, epoch: int, expires_ms: int
) -> Approval:
    """An approval for exactly this order, in trading-state `epoch`, until `expires_ms`."""
    token = _hmac(secret, ["approval", decision_id, *order_fields(order), epoch, expires_ms])
    return Approval(decision_id, token, expires_ms, epoch)


def verify_approval(
    secret: str,
    approval: Approval | None,
    *,
    order: OrderRequest,
    now_ms: int,
    current_epoch: int | None = None,
    check_expiry: bool = True,
) -> None:
    """Return if `approval` was issued for this very order and is still valid; else raise.

    `current_epoch` is the latest trading-state epoch the caller knows; an approval from an
    earlier epoch was issued before a state change (a halt) and is REVOKED.
    """
    if approval is None:
        raise ApprovalError(
            ApprovalProblem.MISSING,
            "approval is missing: ask risk-safety (POST /check) and send its approval",
        )
    expected = sign_approval(
        secret,
        decision_id=approval.decision_id,
        order=order,
        epoch=approval.epoch,
        expires_ms=approval.expires_ms,
    )
    if not hmac.compare_digest(expected.token, approval.token):
        raise ApprovalError(
            ApprovalProblem.INVALID,
            "approval token is invalid: it was not issued by risk-safety for this order "
            "(client_order_id, symbol, side, quantity, order_type, limit_price, "
            "time_in_force, reduce_only), epoch and expiry",
        )
    if current_epoch is not None and approval.epoch < current_epoch:
        raise ApprovalError(
            ApprovalProblem.REVOKED,
            f"approval was issued in trading-state epoch {approval.epoch}; the state has "
            f"changed since (epoch {current_epoch}), which revokes it: ask risk-safety again",
        )
    if check_expiry and now_ms >= approval.expires_ms:
        raise ApprovalError(
            ApprovalProblem.EXPIRED,
            f"approval expired at {approval.expires_ms} ms, {now_ms - approval.expires_ms} ms ago",
        )


@dataclass(frozen=True, slots=True)
class SignedState:
    """The trading state as risk-safety vouches for it: `epoch` grows with every change."""

    state: str
    epoch: int
    token: str


def sign_state(secret: str, *, state: str, epoch: int) -> SignedState:
    """Sign `state` in `epoch`, for execution to adopt."""
    return SignedState(state, epoch, _hmac(secret, ["state", state, epoch]))


def verify_state(secret: str, signed: SignedState) -> bool:
    """True if `signed` was issued by the holder of `secret`."""
    expected = sign_state(secret, state=signed.state, epoch=signed.epoch)
    return hmac.compare_digest(expected.token, signed.token)
