"""position-monitor's public contract: the positions it protects, their stops and their exits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.infra.service import Price
from backend.trading.stops import ExitConfig, Offset, OffsetKind, PriceSource

from ._client import ServiceClient
from .common import MAX_INT64, PlainDecimal

SERVICE = "position-monitor"

Source = Literal["LAST", "BID_ASK", "MARK"]
"""Which price of a tick a rule is judged at: the last trade, the side of the book the exit
trades at (bid for a long, ask for a short), or the mark (mid of bid and ask)."""


class OffsetModel(BaseModel):
    """A distance from a reference price: `value` percent of it, or an absolute amount."""

    model_config = ConfigDict(extra="forbid")

    value: Price
    kind: Literal["PERCENT", "ABSOLUTE"] = "PERCENT"

    @classmethod
    def of(cls, offset: Offset | None) -> OffsetModel | None:
        return None if offset is None else cls(value=offset.value, kind=offset.kind.value)

    def to_offset(self) -> Offset:
        return Offset(self.value, OffsetKind(self.kind))


class Stops(BaseModel):
    """A position's exits; a rule left null is off. `PUT` replaces all of them at once.

    Changing the trailing offset never loosens the trailing level already reached: the level
    only ratchets in the position's favour.
    """

    model_config = ConfigDict(extra="forbid")

    stop_loss: OffsetModel | None = None
    take_profit: OffsetModel | None = None
    trailing_stop: OffsetModel | None = None
    trailing_activation: OffsetModel | None = None
    """Profit from the entry that arms the trailing stop (armed at once when null)."""
    time_limit_ms: Annotated[int, Field(gt=0, le=MAX_INT64)] | None = None
    stop_loss_price: Source = "BID_ASK"
    take_profit_price: Source = "BID_ASK"
    trailing_price: Source = "BID_ASK"

    @classmethod
    def of(cls, config: ExitConfig) -> Stops:
        return cls(
            stop_loss=OffsetModel.of(config.stop_loss),
            take_profit=OffsetModel.of(config.take_profit),
            trailing_stop=OffsetModel.of(config.trailing_stop),
            trailing_activation=OffsetModel.of(config.trailing_activation),
            time_limit_ms=config.time_limit_ms,
            stop_loss_price=config.stop_loss_price.value,
            take_profit_price=config.take_profit_price.value,
            trailing_price=config.trailing_price.value,
        )

    def to_config(self) -> ExitConfig:
        def offset(model: OffsetModel | None) -> Offset | None:
            return None if model is None else model.to_offset()

        return ExitConfig(
            stop_loss=offset(self.stop_loss),
            take_profit=offset(self.take_profit),
            trailing_stop=offset(self.trailing_stop),
            trailing_activation=offset(self.trailing_activation),
            time_limit_ms=self.time_limit_ms,
            stop_loss_price=PriceSource(self.stop_loss_price),
            take_profit_price=PriceSource(self.take_profit_price),
            trailing_price=PriceSource(self.trailing_price),
        )


class ExitPublic(BaseModel):
    """The exit under way (or done, or given up): which rule, which order, how it went."""

    reason: str
    stage: str
    """`EXIT` (the first exit order) or `EMERGENCY` (the market exit of the escalation)."""
    client_order_id: str
    trigger_price: PlainDecimal | None
    observed_price: PlainDecimal | None
    quantity: PlainDecimal | None
    started_ms: int | None
    outcome: str | None
    """`FILLED`, `PARTIAL`, `WORKING`, `DENIED`, `REJECTED`, `UNAVAILABLE`, `UNKNOWN`, or null
    while the order is being sent."""
    detail: str
    trace_id: str | None


class MonitoredPositionPublic(BaseModel):
    """A position position-monitor watches, with its stops and where they stand now."""

    position_id: str
    symbol: str
    status: str
    """`OPEN` (watched), `EXITING`, `ALERTED` (the exit gave up; an operator must act, a `PUT`
    of its stops re-arms it), `CLOSED`."""
    quantity: PlainDecimal
    entry_price: PlainDecimal
    opened_ms: int
    stops: Stops
    stop_loss_level: PlainDecimal | None
    take_profit_level: PlainDecimal | None
    best_price: PlainDecimal | None
    trailing_active: bool
    trailing_level: PlainDecimal | None
    """The trailing stop's level: it only ever moves in the position's favour."""
    exit_round: int
    exit: ExitPublic | None
    closed_ms: int | None


class MonitoredPositionsPublic(BaseModel):
    data: list[MonitoredPositionPublic]
    count: int


class PositionMonitorClient(ServiceClient):
    """position-monitor's API (on its side port) as its callers use it."""

    service = SERVICE

    async def positions(self, status: str | None = None) -> MonitoredPositionsPublic:
        """`GET /positions`, optionally only those of one status."""
        params = {"status": status} if status else None
        return await self._call("GET", "/positions", MonitoredPositionsPublic, params=params)

    async def set_stops(self, position_id: str, stops: Stops) -> MonitoredPositionPublic:
        """`PUT /positions/{position_id}/stops`: replace the position's stops."""
        return await self._call(
            "PUT", f"/positions/{position_id}/stops", MonitoredPositionPublic, body=stops
        )
