"""The trading events: what the services announce to each other, in the domain's own types.

Each event type travels on a stream of its own name (`EVENT_TYPES` maps the type to its data
model); the event bus (`backend.infra.eventbus`) carries them without knowing what they mean.
Money, prices and quantities are `Decimal` and travel as JSON strings, so no float rounding
ever touches them. A model may gain optional fields without a version bump (consumers ignore
fields they do not know); a breaking change bumps the model's `schema_version`, and a consumer
dead-letters events whose version is newer than the one it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from backend.trading.risk import TradingState
from backend.trading.stops import ExitReason
from backend.trading.types import (
    ClientOrderId,
    Direction,
    Fill,
    FillId,
    Liquidity,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
    field_values,
)


class TradingEvent(BaseModel):
    """Base of every event's data: immutable, unknown fields ignored for forward compatibility."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: ClassVar[int] = 1
    """The version of this data model; a breaking change bumps it."""

    dedup_ttl_s: ClassVar[int | None] = None
    """How long consumer groups remember a processed event of this type (its idempotency
    mark); None: `EVENTBUS_DEDUP_TTL_S` (7 days), long enough to cover any outage an outbox
    can replay across."""

    market_data: ClassVar[bool] = False
    """Market data rather than a record: carried by the market-data Redis when one is
    configured (`MARKET_REDIS_URL`, see docs/EVENTBUS.md)."""


class MarketTick(TradingEvent):
    """Top of book for one symbol at one instant."""

    # Ticks are the bulk of the traffic (20 Hz per symbol, every group marks each one) and are
    # published directly, never replayed by an outbox: a second copy of a tick can only be the
    # publisher's own retry after a lost reply (within EVENTBUS_RECONNECT_TIMEOUT_S, 30 s), and
    # a redelivered pending entry carries no mark yet (marks are written with the XACK). Five
    # minutes covers both with room for consumer lag, and bounds the marks to
    # rate x 300 s instead of rate x 7 days.
    dedup_ttl_s: ClassVar[int | None] = 300
    # Superseded by the next quote within a second and never the source of an accounting
    # record (a fill's price is the venue's), so a tick may live where an fsync per write is
    # not paid: the market-data Redis, when one is configured (MARKET_REDIS_URL).
    market_data: ClassVar[bool] = True

    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal
    ts_ms: int = Field(description="Exchange (or simulator) time of the quote, Unix ms.")


class SignalGenerated(TradingEvent):
    """The model's view on a symbol."""

    signal_id: str
    symbol: str
    direction: Direction
    confidence: float
    probability_up: float
    model_version: str
    reference_price: Decimal | None = None


class OrderSubmitted(TradingEvent):
    """An order sent to the venue (after the risk check approved it)."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False
    signal_id: str | None = None

    @classmethod
    def of(cls, order: OrderRequest) -> OrderSubmitted:
        """The announcement of `order`, sent to the venue."""
        return cls(**field_values(order))


class OrderAccepted(TradingEvent):
    """The venue accepted an order."""

    client_order_id: str
    symbol: str
    venue_order_id: str | None = None


class OrderRejected(TradingEvent):
    """The venue (or the risk check) refused an order."""

    client_order_id: str
    symbol: str
    reason: str


class OrderCanceled(TradingEvent):
    """An order stopped working before it was completely filled."""

    client_order_id: str
    symbol: str
    filled_quantity: Decimal = Decimal(0)
    reason: str = ""


class OrderFilled(TradingEvent):
    """One fill (execution) of an order: the event that moves positions and cash."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: Liquidity
    leaves_quantity: Decimal = Decimal(0)
    ts_ms: int
    # The venue's fill sequence: fills of one venue in the order they happened. Average-cost
    # accounting depends on that order, so a consumer applies fills by it, not by arrival.
    sequence: int | None = None

    @classmethod
    def of(cls, fill: Fill, leaves_quantity: Decimal) -> OrderFilled:
        """The announcement of `fill`, with what is left of its order after it."""
        return cls(**field_values(fill), leaves_quantity=leaves_quantity)

    def to_fill(self) -> Fill:
        """The fill this event announces."""
        return Fill(
            FillId(self.fill_id),
            ClientOrderId(self.client_order_id),
            Symbol(self.symbol),
            self.side,
            self.quantity,
            self.price,
            self.fee,
            self.liquidity,
            self.ts_ms,
        )


class PositionUpdated(TradingEvent):
    """A position after a fill or a mark-to-market; `quantity` is signed (negative = short).

    `sequence` is the highest venue fill sequence booked for the symbol when the position was
    published: a consumer keeps the update with the highest one (a redelivered or late update
    carries a lower or equal one). `client_order_id` is the order whose fill moved it.
    """

    symbol: str
    quantity: Decimal
    average_price: Decimal | None
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    mark_price: Decimal | None = None
    sequence: int | None = None
    client_order_id: str | None = None


class RiskDecision(TradingEvent):
    """The pre-trade risk check's verdict on an order."""

    client_order_id: str
    symbol: str
    approved: bool
    reason_code: str
    detail: str = ""


class RiskStateChanged(TradingEvent):
    """Trading moved between ACTIVE, REDUCING and HALTED."""

    previous_state: TradingState
    state: TradingState
    reason: str


class StopTriggered(TradingEvent):
    """A protective exit fired for a position (position-monitor, before it sends the exit).

    `mark_price` is the price the rule was judged at (its price source's price in the tick).
    """

    symbol: str
    reason: ExitReason
    trigger_price: Decimal
    mark_price: Decimal
    quantity: Decimal
    position_id: str | None = None
    client_order_id: str | None = None


class StopFailed(TradingEvent):
    """An alert: a triggered exit and its emergency exit were both refused or left unfilled,
    and the position is still open (position-monitor). An operator has to act."""

    symbol: str
    position_id: str
    reason: ExitReason
    quantity: Decimal
    client_order_id: str
    detail: str = ""


# Not published yet: clm (the issue on the other three services) publishes it after retraining.
class ModelTrained(TradingEvent):
    """A model was trained and evaluated; not yet serving."""

    model_version: str
    metrics: dict[str, float]
    samples: int
    trained_at: datetime


# Not published yet: clm (the issue on the other three services) publishes a promotion, and
# eventbus-bridge's webhooks forward it.
class ModelPromoted(TradingEvent):
    """A trained model now serves predictions."""

    model_version: str
    previous_version: str | None = None
    reason: str = ""


class FeedStalled(TradingEvent):
    """A data feed (market data, or any other input) went silent for too long."""

    feed: str
    symbol: str | None = None
    last_seen_ms: int | None = None
    silent_ms: int | None = None


EVENT_TYPES: Mapping[str, type[TradingEvent]] = {
    "market.tick": MarketTick,
    "signal.generated": SignalGenerated,
    "order.submitted": OrderSubmitted,
    "order.accepted": OrderAccepted,
    "order.rejected": OrderRejected,
    "order.canceled": OrderCanceled,
    "order.filled": OrderFilled,
    "position.updated": PositionUpdated,
    "risk.decision": RiskDecision,
    "risk.state_changed": RiskStateChanged,
    "stop.triggered": StopTriggered,
    "stop.failed": StopFailed,
    "model.trained": ModelTrained,
    "model.promoted": ModelPromoted,
    "feed.stalled": FeedStalled,
}
"""Every trading event type and its data model: the catalogue the event bus loads."""
