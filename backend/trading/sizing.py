"""Order sizing: a confidence-scaled fraction of equity, capped and rounded down to the lot size."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

ZERO = Decimal(0)


class SizeConstraint(StrEnum):
    """Which rule decided the final size."""

    EQUITY_FRACTION = "EQUITY_FRACTION"
    MAX_NOTIONAL = "MAX_NOTIONAL"
    MAX_QUANTITY = "MAX_QUANTITY"
    BELOW_MIN_NOTIONAL = "BELOW_MIN_NOTIONAL"
    NO_EQUITY = "NO_EQUITY"
    POLICY = "POLICY"
    """A sizing policy wants no more exposure in the order's direction."""


@dataclass(frozen=True, slots=True)
class SizingParams:
    """Sizing policy. `equity_fraction` is the share of equity committed at full confidence."""

    equity_fraction: Decimal
    max_notional: Decimal
    max_quantity: Decimal
    lot_size: Decimal
    min_notional: Decimal = ZERO

    def __post_init__(self) -> None:
        if not ZERO < self.equity_fraction <= 1:
            raise ValueError("equity_fraction must be in (0, 1]")
        if self.max_notional <= ZERO or self.max_quantity <= ZERO or self.lot_size <= ZERO:
            raise ValueError("max_notional, max_quantity and lot_size must be positive")
        if self.min_notional < ZERO:
            raise ValueError("min_notional must not be negative")


@dataclass(frozen=True, slots=True)
class SizeDecision:
    """The quantity to trade (zero means do not trade), its notional, and the binding rule."""

    quantity: Decimal
    notional: Decimal
    constraint: SizeConstraint


def size_order(
    equity: Decimal, price: Decimal, confidence: float | Decimal, params: SizingParams
) -> SizeDecision:
    """Size an order at `price` for a signal of the given confidence (0..1)."""
    if price <= ZERO:
        raise ValueError("price must be positive")
    conf = confidence if isinstance(confidence, Decimal) else Decimal(str(confidence))
    if not ZERO <= conf <= 1:
        raise ValueError("confidence must be in [0, 1]")
    if equity <= ZERO:
        return SizeDecision(ZERO, ZERO, SizeConstraint.NO_EQUITY)

    notional = equity * params.equity_fraction * conf
    constraint = SizeConstraint.EQUITY_FRACTION
    if notional > params.max_notional:
        notional, constraint = params.max_notional, SizeConstraint.MAX_NOTIONAL
    quantity = notional / price
    if quantity > params.max_quantity:
        quantity, constraint = params.max_quantity, SizeConstraint.MAX_QUANTITY
    # Rounding down keeps every cap honoured after lot rounding.
    lots = (quantity / params.lot_size).to_integral_value(rounding=ROUND_FLOOR)
    quantity = lots * params.lot_size
    notional = quantity * price
    if quantity <= ZERO or notional < params.min_notional:
        return SizeDecision(ZERO, ZERO, SizeConstraint.BELOW_MIN_NOTIONAL)
    return SizeDecision(quantity, notional, constraint)


def policy_scale(side: str, target_exposure: float) -> Decimal:
    """The share of the rule-based size a policy's target exposure (0 to 1 of equity) lets
    through: a BUY scaled by how much exposure the policy wants, a SELL by how much it wants
    out (a policy that wants to be fully in lets no SELL through, one that wants out all of it)."""
    if not 0.0 <= target_exposure <= 1.0:
        raise ValueError("target_exposure must be in [0, 1]")
    level = Decimal(repr(target_exposure))
    if side == "BUY":
        return level
    if side == "SELL":
        return 1 - level
    raise ValueError(f"side must be BUY or SELL, not {side!r}")


def size_order_for_exposure(
    equity: Decimal,
    price: Decimal,
    confidence: float | Decimal,
    params: SizingParams,
    *,
    side: str,
    target_exposure: float,
) -> SizeDecision:
    """`size_order` with the confidence scaled by `policy_scale`: the caps, lot rounding and
    minimum notional apply as ever; a policy that lets nothing through is `POLICY`."""
    scale = policy_scale(side, target_exposure)
    if scale <= ZERO:
        return SizeDecision(ZERO, ZERO, SizeConstraint.POLICY)
    conf = confidence if isinstance(confidence, Decimal) else Decimal(str(confidence))
    return size_order(equity, price, conf * scale, params)
