"""What position-monitor knows of one position: its stops, its trailing state, its exit."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from backend.trading.stops import ExitConfig, ExitReason, OpenPosition, TrailingState
from backend.trading.types import Side, Symbol


class Status(StrEnum):
    """Where a position is in position-monitor's hands."""

    OPEN = "OPEN"
    """Watched: every tick is checked against its stops."""
    EXITING = "EXITING"
    """A stop triggered; the exit (or its emergency exit) is under way."""
    ALERTED = "ALERTED"
    """The emergency exit failed too: an alert went out, an operator must act."""
    CLOSED = "CLOSED"


class Stage(StrEnum):
    """Which exit order of the escalation is under way."""

    EXIT = "EXIT"
    EMERGENCY = "EMERGENCY"


class Outcome(StrEnum):
    """What became of an exit order."""

    FILLED = "FILLED"
    PARTIAL = "PARTIAL"
    """Part filled, the rest canceled (a market order never rests)."""
    WORKING = "WORKING"
    DENIED = "DENIED"
    """risk-safety did not approve it."""
    REJECTED = "REJECTED"
    """execution refused or rejected it."""
    UNAVAILABLE = "UNAVAILABLE"
    """risk-safety could not be asked: nothing was sent to execution."""
    UNKNOWN = "UNKNOWN"
    """execution did not answer: the order may exist; the same client order id is sent again."""

    @property
    def settled(self) -> bool:
        """True when sending the same order again can change nothing."""
        return self not in (Outcome.UNAVAILABLE, Outcome.UNKNOWN)


@dataclass(frozen=True, slots=True)
class ExitState:
    """The exit order under way: its rule, stage, client order id and outcome."""

    reason: ExitReason
    stage: Stage
    client_order_id: str
    trigger_price: Decimal
    observed_price: Decimal
    quantity: Decimal
    started_ms: int
    outcome: Outcome | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Tracked:
    """One position as position-monitor holds it (and stores it, row for row)."""

    position_id: str
    symbol: Symbol
    status: Status
    quantity: Decimal
    entry_price: Decimal
    opened_ms: int
    sequence: int | None
    config: ExitConfig
    trailing: TrailingState | None = None
    exit_round: int = 1
    exit: ExitState | None = None
    trace_id: str | None = None
    closed_ms: int | None = None
    entry_client_order_id: str | None = None
    """The order whose fill opened the position (from portfolio's `position.updated`)."""
    entry_traceparent: str | None = None
    """The W3C context of that `position.updated` event: the exit's spans link to it."""

    @property
    def direction(self) -> int:
        return 1 if self.quantity > 0 else -1

    @property
    def exit_side(self) -> Side:
        return Side.SELL if self.quantity > 0 else Side.BUY

    def open_position(self) -> OpenPosition:
        """The position as the stop rules judge it."""
        return OpenPosition(self.symbol, self.quantity, self.entry_price, self.opened_ms)

    def stop_loss_level(self) -> Decimal | None:
        offset = self.config.stop_loss
        if offset is None:
            return None
        return self.entry_price - self.direction * offset.distance(self.entry_price)

    def take_profit_level(self) -> Decimal | None:
        offset = self.config.take_profit
        if offset is None:
            return None
        return self.entry_price + self.direction * offset.distance(self.entry_price)
