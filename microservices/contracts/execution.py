"""execution's public contract: orders and fills, quotes and balances, the trading state it
enforces (pushed by risk-safety) and its exposure view for risk-safety."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.trading.approval import SignedState
from backend.trading.types import OrderType

from ._client import ServiceClient
from .common import IDENTIFIER_PATTERN, MAX_INT64, OrderFields, PlainDecimal
from .risk_safety import ApprovalPublic

SERVICE = "execution"

ClientOrderIdIn = Annotated[
    str, Field(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN, examples=["bot-7f3a2c"])
]
SymbolIn = Annotated[
    str, Field(min_length=1, max_length=32, pattern=IDENTIFIER_PATTERN, examples=["BTCUSDT"])
]


class OrderCreate(OrderFields):
    """An order to place; `client_order_id` makes the request idempotent.

    `approval` is the one risk-safety returned from `POST /check` for exactly this order.
    """

    client_order_id: ClientOrderIdIn
    symbol: SymbolIn
    approval: ApprovalPublic | None = None

    @model_validator(mode="after")
    def _price_fits_type(self) -> OrderCreate:
        if self.order_type == OrderType.LIMIT and self.limit_price is None:
            raise ValueError("limit_price is required for a LIMIT order")
        if self.order_type == OrderType.MARKET and self.limit_price is not None:
            raise ValueError("limit_price must be null for a MARKET order")
        return self


class FillPublic(BaseModel):
    fill_id: str
    # The venue's order of fills (fill timestamps mix quote time and wall time, so they cannot
    # order fills of resting and market orders against each other).
    sequence: int
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: str
    filled_at: datetime


class OrderPublic(BaseModel):
    client_order_id: str
    status: str
    symbol: str
    side: str
    quantity: Decimal
    filled_quantity: Decimal
    avg_fill_price: Decimal | None
    order_type: str
    limit_price: Decimal | None
    time_in_force: str
    reduce_only: bool
    reason: str
    risk_decision_id: str | None
    created_at: datetime
    updated_at: datetime
    fills: list[FillPublic]


class OrdersPublic(BaseModel):
    data: list[OrderPublic]
    count: int


class OrderEventPublic(BaseModel):
    """One transition of an order, read from the persisted row of the same field names."""

    model_config = ConfigDict(from_attributes=True)

    sequence: int
    kind: str
    from_status: str | None
    to_status: str
    filled_quantity: Decimal
    fill_quantity: Decimal | None
    fill_price: Decimal | None
    reason: str
    trace_id: str | None
    occurred_at: datetime


class OrderEventsPublic(BaseModel):
    data: list[OrderEventPublic]
    count: int


class QuotePublic(BaseModel):
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal
    ts_ms: int


class HoldingPublic(BaseModel):
    symbol: str
    quantity: Decimal
    available: Decimal


class AccountPublic(BaseModel):
    """The venue's balances: reserved amounts back the open orders."""

    cash: Decimal
    reserved_cash: Decimal
    available_cash: Decimal
    holdings: list[HoldingPublic]
    open_orders: int


class RiskStateIn(BaseModel):
    """A trading state signed by risk-safety, pushed on every change."""

    state: str = Field(min_length=1, max_length=16, pattern=r"^[A-Z_]+$", examples=["HALTED"])
    epoch: int = Field(ge=0, le=MAX_INT64)
    token: str = Field(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)
    reason: str = Field(default="", max_length=4000)

    @classmethod
    def of(cls, signed: SignedState, reason: str) -> RiskStateIn:
        return cls(state=signed.state, epoch=signed.epoch, token=signed.token, reason=reason)

    def to_signed_state(self) -> SignedState:
        return SignedState(self.state, self.epoch, self.token)


class RiskStateUpdatePublic(BaseModel):
    """The state execution enforces after a push, and the orders the push canceled."""

    state: str
    epoch: int
    canceled: list[str]


class RiskStatePublic(BaseModel):
    """The trading state execution enforces, how it arrived, and its lease."""

    state: str | None
    epoch: int | None
    source: str | None
    reason: str | None
    adopted_at_ms: int | None
    adopted_fill_sequence: int | None
    """The highest venue fill sequence when the state was adopted."""
    lease_ms: int
    lease_age_ms: int | None
    lease_expired: bool
    accepts: Literal["ALL", "REDUCE_ONLY"]
    blocker: str | None
    """Why exposure-increasing orders are refused (and held), if they are."""


class WorkingOrderPublic(BaseModel):
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    limit_price: PlainDecimal | None
    remaining_quantity: PlainDecimal
    reduce_only: bool


class ExposurePublic(BaseModel):
    """Execution's exposure as of one instant, for risk-safety's limits."""

    as_of_ms: int
    fill_sequence: int
    risk_state: str | None
    risk_epoch: int | None
    holdings: dict[str, PlainDecimal]
    working: list[WorkingOrderPublic]
    client_order_ids_since: list[str]


class ExecutionClient(ServiceClient):
    """execution's API as its callers use it."""

    service = SERVICE

    async def place_order(self, order: OrderCreate) -> OrderPublic:
        """`POST /orders`: a known client order id with the same order answers that order."""
        return await self._call("POST", "/orders", OrderPublic, body=order)

    async def exposure(self, since_ms: int) -> ExposurePublic:
        """`GET /exposure`: holdings, working orders and the client order ids since `since_ms`."""
        return await self._call("GET", "/exposure", ExposurePublic, params={"since_ms": since_ms})

    async def push_risk_state(
        self, state: RiskStateIn, *, timeout_s: float | None = None
    ) -> RiskStateUpdatePublic:
        """`POST /risk/state`: hand execution a newly signed trading state."""
        return await self._call(
            "POST", "/risk/state", RiskStateUpdatePublic, body=state, timeout_s=timeout_s
        )

    async def risk_state(self, *, timeout_s: float | None = None) -> RiskStatePublic:
        """`GET /risk/state`: the trading state execution enforces, and its lease."""
        return await self._call("GET", "/risk/state", RiskStatePublic, timeout_s=timeout_s)

    async def orders(self, limit: int = 100) -> OrdersPublic:
        """`GET /orders`: the newest orders first."""
        return await self._call("GET", "/orders", OrdersPublic, params={"limit": limit})
