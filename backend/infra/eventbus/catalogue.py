"""The event catalogue: every event type, the stream that carries it and its data model.

One stream per event type. Money, prices and quantities are `Decimal` and travel as JSON
strings, so no float rounding ever touches them. A model may gain optional fields without a
version bump (consumers ignore fields they do not know); a breaking change bumps `version`,
and a consumer dead-letters events whose version is newer than the one it knows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._errors import UnknownEventType

Side = Literal["BUY", "SELL"]
OrderType = Literal["MARKET", "LIMIT"]
TimeInForce = Literal["GTC", "IOC"]


class EventData(BaseModel):
    """Base of every event's data: immutable, unknown fields ignored for forward compatibility."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class MarketTick(EventData):
    """Top of book for one symbol at one instant."""

    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal
    ts_ms: int = Field(description="Exchange (or simulator) time of the quote, Unix ms.")


class SignalGenerated(EventData):
    """The model's view on a symbol."""

    signal_id: str
    symbol: str
    direction: Literal["BUY", "SELL", "HOLD"]
    confidence: float
    probability_up: float
    model_version: str
    reference_price: Decimal | None = None


class OrderSubmitted(EventData):
    """An order sent to the venue (after the risk check approved it)."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = "GTC"
    reduce_only: bool = False
    signal_id: str | None = None


class OrderAccepted(EventData):
    """The venue accepted an order."""

    client_order_id: str
    symbol: str
    venue_order_id: str | None = None


class OrderRejected(EventData):
    """The venue (or the risk check) refused an order."""

    client_order_id: str
    symbol: str
    reason: str


class OrderCanceled(EventData):
    """An order stopped working before it was completely filled."""

    client_order_id: str
    symbol: str
    filled_quantity: Decimal = Decimal(0)
    reason: str = ""


class OrderFilled(EventData):
    """One fill (execution) of an order: the event that moves positions and cash."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: Literal["MAKER", "TAKER"]
    leaves_quantity: Decimal = Decimal(0)
    ts_ms: int
    # The venue's fill sequence: fills of one venue in the order they happened. Average-cost
    # accounting depends on that order, so a consumer applies fills by it, not by arrival.
    sequence: int | None = None


class PositionUpdated(EventData):
    """A position after a fill or a mark-to-market; `quantity` is signed (negative = short)."""

    symbol: str
    quantity: Decimal
    average_price: Decimal | None
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    mark_price: Decimal | None = None


class RiskDecision(EventData):
    """The pre-trade risk check's verdict on an order."""

    client_order_id: str
    symbol: str
    approved: bool
    reason_code: str
    detail: str = ""


class RiskStateChanged(EventData):
    """Trading moved between ACTIVE, REDUCING and HALTED."""

    previous_state: Literal["ACTIVE", "REDUCING", "HALTED"]
    state: Literal["ACTIVE", "REDUCING", "HALTED"]
    reason: str


# Not published yet: position-monitor (the issue on the other three services) publishes it.
class StopTriggered(EventData):
    """A protective exit fired for a position."""

    symbol: str
    reason: Literal["STOP_LOSS", "TRAILING_STOP", "TAKE_PROFIT"]
    trigger_price: Decimal
    mark_price: Decimal
    quantity: Decimal


# Not published yet: clm (the issue on the other three services) publishes it after retraining.
class ModelTrained(EventData):
    """A model was trained and evaluated; not yet serving."""

    model_version: str
    metrics: dict[str, float]
    samples: int
    trained_at: datetime


# Not published yet: clm (the issue on the other three services) publishes a promotion, and
# eventbus-bridge's webhooks forward it.
class ModelPromoted(EventData):
    """A trained model now serves predictions."""

    model_version: str
    previous_version: str | None = None
    reason: str = ""


class FeedStalled(EventData):
    """A data feed (market data, or any other input) went silent for too long."""

    feed: str
    symbol: str | None = None
    last_seen_ms: int | None = None
    silent_ms: int | None = None


DataModel = type[EventData]
"""A data model class (a field named `type` below would shadow the builtin in annotations)."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogue row: the event type, its stream and its data model at `version`."""

    type: str
    stream: str
    model: DataModel
    version: int = 1


class Catalogue:
    """Look-ups over a set of `EventSpec`s, by type and by data model; each type, stream and
    model is listed once."""

    def __init__(self, specs: list[EventSpec]) -> None:
        self._by_type: dict[str, EventSpec] = {}
        self._by_stream: dict[str, EventSpec] = {}
        self._by_model: dict[type[EventData], EventSpec] = {}
        for spec in specs:
            for index, key in ((self._by_type, spec.type), (self._by_stream, spec.stream)):
                if key in index:
                    raise ValueError(f"catalogue lists {key!r} twice")
                index[key] = spec
            if spec.model in self._by_model:
                raise ValueError(f"catalogue lists model {spec.model.__name__} twice")
            self._by_model[spec.model] = spec

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    @property
    def by_type(self) -> Mapping[str, EventSpec]:
        """Specs keyed by event type."""
        return self._by_type

    def spec_for_type(self, event_type: str) -> EventSpec:
        """The spec of `event_type`; `UnknownEventType` if the catalogue does not list it."""
        try:
            return self._by_type[event_type]
        except KeyError:
            raise UnknownEventType(f"unknown event type {event_type!r}") from None

    def spec_for_model(self, model: type[EventData]) -> EventSpec:
        """The spec whose data model is `model`."""
        try:
            return self._by_model[model]
        except KeyError:
            raise UnknownEventType(f"{model.__name__} is not an event data model") from None


CATALOGUE = Catalogue(
    [
        EventSpec("market.tick", "market.tick", MarketTick),
        EventSpec("signal.generated", "signal.generated", SignalGenerated),
        EventSpec("order.submitted", "order.submitted", OrderSubmitted),
        EventSpec("order.accepted", "order.accepted", OrderAccepted),
        EventSpec("order.rejected", "order.rejected", OrderRejected),
        EventSpec("order.canceled", "order.canceled", OrderCanceled),
        EventSpec("order.filled", "order.filled", OrderFilled),
        EventSpec("position.updated", "position.updated", PositionUpdated),
        EventSpec("risk.decision", "risk.decision", RiskDecision),
        EventSpec("risk.state_changed", "risk.state_changed", RiskStateChanged),
        EventSpec("stop.triggered", "stop.triggered", StopTriggered),
        EventSpec("model.trained", "model.trained", ModelTrained),
        EventSpec("model.promoted", "model.promoted", ModelPromoted),
        EventSpec("feed.stalled", "feed.stalled", FeedStalled),
    ]
)
"""Every event the platform exchanges. Stream names equal event types: one stream per type."""
