"""Risk approvals: HMAC-SHA256 tokens that risk-safety issues and execution verifies offline.

A token binds one decision to one order: (decision_id, client_order_id, symbol, side,
quantity, expires_ms). Both services share `RISK_APPROVAL_SECRET`; the default below is for
development only and must be changed anywhere real money, or a shared network, is involved.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

DEVELOPMENT_SECRET = "quantum-trader-development-approval-secret-change-me"


class ApprovalProblem(StrEnum):
    """Why an approval was refused."""

    MISSING = "MISSING"
    INVALID = "INVALID"
    EXPIRED = "EXPIRED"


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


def canonical_quantity(quantity: Decimal) -> str:
    """One spelling per value ("1.50" and "1.5" sign the same), without exponent notation."""
    text = format(quantity.normalize(), "f")
    return text if text != "-0" else "0"


def _message(
    decision_id: str,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    expires_ms: int,
) -> bytes:
    # JSON keeps field boundaries: ("ab", "c") and ("a", "bc") sign differently.
    fields = [decision_id, client_order_id, symbol, side, canonical_quantity(quantity), expires_ms]
    return json.dumps(fields, separators=(",", ":")).encode()


def sign_approval(
    secret: str,
    *,
    decision_id: str,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    expires_ms: int,
) -> Approval:
    """An approval for exactly this order, valid until `expires_ms` (Unix ms)."""
    message = _message(decision_id, client_order_id, symbol, side, quantity, expires_ms)
    token = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return Approval(decision_id, token, expires_ms)


def verify_approval(
    secret: str,
    approval: Approval | None,
    *,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    now_ms: int,
    check_expiry: bool = True,
) -> None:
    """Return if `approval` was issued for this order and is still valid; else ApprovalError."""
    if approval is None:
        raise ApprovalError(
            ApprovalProblem.MISSING,
            "approval is missing: ask risk-safety (POST /check) and send its approval",
        )
    expected = sign_approval(
        secret,
        decision_id=approval.decision_id,
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,
        quantity=quantity,
        expires_ms=approval.expires_ms,
    )
    if not hmac.compare_digest(expected.token, approval.token):
        raise ApprovalError(
            ApprovalProblem.INVALID,
            "approval token is invalid: it was not issued by risk-safety for this "
            "client_order_id, symbol, side, quantity and expiry",
        )
    if check_expiry and now_ms >= approval.expires_ms:
        raise ApprovalError(
            ApprovalProblem.EXPIRED,
            f"approval expired at {approval.expires_ms} ms, {now_ms - approval.expires_ms} ms ago",
        )
