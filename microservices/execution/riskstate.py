"""The trading state execution enforces: adopted from risk-safety's signed state, held on a lease.

Risk-safety pushes every state change (`POST /risk/state`) and execution polls `GET /state`
as well; both hand over a `SignedState`. `RiskStateGate` decides what to do with one
(adopt it, refresh the lease, or ignore it) and answers the one question the order desk asks
before every submission and every tick: may an order that increases exposure be accepted or
filled now? Only while the adopted state is ACTIVE and the lease is fresh. Before the first
verified state, and once `lease_ms` have passed without one, the answer is no (fail closed).

Plain logic, no I/O: the caller passes the clock readings and holds the desk's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from backend.trading.approval import SignedState
from backend.trading.orders import Order
from backend.trading.types import OrderRequest, Side

ACTIVE = "ACTIVE"


class Outcome(StrEnum):
    """What a verified signed state did to the gate."""

    ADOPTED = "adopted"
    """A higher epoch (or the first state): now enforced."""
    CURRENT = "current"
    """The epoch and state already enforced: the lease is renewed, nothing else changes."""
    STALE = "stale"
    """A lower epoch than the one enforced: ignored (an old state never comes back)."""
    CONFLICT = "conflict"
    """The enforced epoch with another state: ignored, and the lease is not renewed."""


@dataclass(frozen=True, slots=True)
class Adopted:
    """The state being enforced and how it arrived."""

    state: str
    epoch: int
    source: str
    reason: str
    adopted_at_ms: int
    fill_sequence: int
    """The highest venue fill sequence when it was adopted: every later fill saw this state."""


def reduces_exposure(side: Side, reduce_only: bool) -> bool:
    """True for an order that can only reduce a position on this spot venue.

    Holdings never go below zero here (a sell needs the quantity available), so only a
    reduce-only SELL can reduce; a BUY, reduce-only or not, always adds to a holding.
    """
    return reduce_only and side is Side.SELL


def request_reduces(request: OrderRequest) -> bool:
    return reduces_exposure(request.side, request.reduce_only)


def order_reduces(order: Order) -> bool:
    return reduces_exposure(order.side, order.reduce_only)


class RiskStateGate:
    """The adopted trading state, its epoch and the lease that keeps it valid."""

    def __init__(self, *, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self.adopted: Adopted | None = None
        self.closing: SignedState | None = None
        """A verified newer state that closes trading, waiting for the desk's lock."""
        self._verified_at_s: float | None = None

    @property
    def state(self) -> str | None:
        return self.adopted.state if self.adopted else None

    @property
    def epoch(self) -> int | None:
        """The latest epoch known: approvals of any earlier one are revoked."""
        epochs = [s.epoch for s in (self.adopted, self.closing) if s is not None]
        return max(epochs) if epochs else None

    def announce(self, signed: SignedState) -> None:
        """Close trading at once for a verified newer state that is not ACTIVE.

        Adopting a state waits for the desk's lock, behind submissions already queued for it;
        each of them checks `blocker` once it holds the lock, so from this call on none of
        them can increase exposure. A newer ACTIVE state opens nothing until adopted.
        """
        if signed.state == ACTIVE:
            return
        known = self.epoch
        if known is None or signed.epoch > known:
            self.closing = signed

    def consider(self, signed: SignedState, *, now_s: float) -> Outcome:
        """What `signed` (already verified) changes; the caller then calls `adopt` if ADOPTED.

        `now_s` is a monotonic clock reading; a CURRENT state renews the lease from it.
        """
        adopted = self.adopted
        if adopted is None or signed.epoch > adopted.epoch:
            return Outcome.ADOPTED
        if signed.epoch < adopted.epoch:
            return Outcome.STALE
        if signed.state != adopted.state:
            return Outcome.CONFLICT
        self._verified_at_s = now_s
        return Outcome.CURRENT

    def adopt(self, adopted: Adopted, *, now_s: float) -> None:
        self.adopted = adopted
        self._verified_at_s = now_s
        if self.closing is not None and self.closing.epoch <= adopted.epoch:
            self.closing = None

    def lease_age_s(self, now_s: float) -> float | None:
        """Seconds since the last verified state (None before the first)."""
        return None if self._verified_at_s is None else max(0.0, now_s - self._verified_at_s)

    def lease_expired(self, now_s: float) -> bool:
        age = self.lease_age_s(now_s)
        return age is None or age * 1000 > self.lease_ms

    def blocker(self, now_s: float) -> str | None:
        """Why an exposure-increasing order may not be accepted or filled now; None if it may."""
        adopted = self.adopted
        age = self.lease_age_s(now_s)
        closing = self.closing
        if closing is not None:
            return (
                f"trading state is {closing.state} (epoch {closing.epoch}): "
                "only reduce-only orders are accepted"
            )
        if adopted is None or age is None:
            return (
                "trading state UNKNOWN: no verified state from risk-safety yet; "
                "only reduce-only orders are accepted"
            )
        if age * 1000 > self.lease_ms:
            return (
                f"trading state UNKNOWN: the last verified state from risk-safety "
                f"({adopted.state}, epoch {adopted.epoch}) is {age * 1000:.0f} ms old, "
                f"past its {self.lease_ms} ms lease; only reduce-only orders are accepted"
            )
        if adopted.state != ACTIVE:
            return (
                f"trading state is {adopted.state} (epoch {adopted.epoch}): "
                "only reduce-only orders are accepted"
            )
        return None

    def refusal_label(self, now_s: float) -> str:
        """The metric label of a refusal: the state, or UNKNOWN without a valid lease."""
        if self.closing is not None:
            return self.closing.state
        if self.adopted is None or self.lease_expired(now_s):
            return "UNKNOWN"
        return self.adopted.state
