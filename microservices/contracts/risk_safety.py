"""risk-safety's public contract: the pre-trade check, the signed trading state, decisions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field

from backend.infra.service import Price
from backend.trading.approval import Approval, SignedState

from ._client import ServiceClient
from .common import IDENTIFIER_PATTERN, MAX_INT64, OrderFields

SERVICE = "risk-safety"


class CheckRequest(OrderFields):
    """An order to check. It is judged at risk-safety's own quotes; `price` is only recorded.

    `price` (the caller's idea of the market price) is still accepted so that older clients
    keep working, and it is written to the decision for the audit trail.
    """

    price: Price | None = None


class ApprovalPublic(BaseModel):
    """An approval of one order, signed by risk-safety; execution takes it back unchanged."""

    decision_id: str = Field(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)
    token: str = Field(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)
    expires_ms: int = Field(ge=0, le=MAX_INT64)
    epoch: int = Field(default=0, ge=0, le=MAX_INT64)

    @classmethod
    def of(cls, approval: Approval) -> ApprovalPublic:
        return cls(
            decision_id=approval.decision_id,
            token=approval.token,
            expires_ms=approval.expires_ms,
            epoch=approval.epoch,
        )

    def to_approval(self) -> Approval:
        return Approval(self.decision_id, self.token, self.expires_ms, self.epoch)


class CheckResult(BaseModel):
    approved: bool
    reason: str
    detail: str
    decision_id: str
    approval: ApprovalPublic | None
    state: str


class OperatorRequest(BaseModel):
    """Who asks for a state change, and why: both go to the audit trail."""

    operator: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=1000)


class KillSwitchRequest(BaseModel):
    operator: str = Field(default="unspecified", min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=1000)


class PortfolioStatus(BaseModel):
    url: str
    reachable: bool | None
    checked_at_ms: int | None
    age_ms: int | None
    error: str | None


class ExposureStatus(BaseModel):
    url: str
    reachable: bool | None
    checked_at_ms: int | None
    fill_sequence: int | None
    error: str | None


class QuotePublic(BaseModel):
    symbol: str
    bid: Decimal
    ask: Decimal
    age_ms: int


class ExecutionAck(BaseModel):
    """Whether execution adopted the state pushed to it, and the orders it canceled."""

    acknowledged: bool
    canceled: list[str]
    error: str | None


class StatePublic(BaseModel):
    state: str
    reason: str
    changed_at: datetime | None
    changed: bool
    epoch: int
    state_token: str
    execution: ExecutionAck | None = None
    event: str | None = None
    """For a change: `published` on the bus, or `queued` in the outbox until Redis answers."""
    recorded: bool = True
    """False while the state is in force but the database has not taken its record (a halt
    during a database outage): risk-safety writes it as soon as the database answers."""
    portfolio: PortfolioStatus
    exposure: ExposureStatus
    quotes: list[QuotePublic]
    limits: dict[str, Any]


class SignedStatePublic(BaseModel):
    """The signed part of a `StatePublic`: what execution needs to verify and adopt the state.

    An answer without `epoch` and `state_token` (a risk-safety that does not sign its state)
    does not validate: it is no verified state.
    """

    state: str = Field(min_length=1)
    epoch: Annotated[int, Field(strict=True, ge=0)]
    state_token: str = Field(min_length=1)

    def to_signed_state(self) -> SignedState:
        return SignedState(self.state, self.epoch, self.state_token)


class StateChangePublic(BaseModel):
    from_state: str | None
    state: str
    reason: str
    actor: str
    trace_id: str | None
    changed_at: datetime


class StateChangesPublic(BaseModel):
    data: list[StateChangePublic]
    count: int


class DecisionPublic(BaseModel):
    decision_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    approved: bool
    reason: str
    detail: str
    state: str | None
    epoch: int | None
    reference_price: str | None
    """The price risk judged the order at: its own ask (buy) or bid (sell)."""
    caller_price: str | None
    """The `price` the caller sent, for the audit trail only."""
    trace_id: str | None
    decided_at: datetime


class DecisionsPublic(BaseModel):
    data: list[DecisionPublic]
    count: int


class RiskSafetyClient(ServiceClient):
    """risk-safety's API as its callers use it."""

    service = SERVICE

    async def check(self, order: CheckRequest) -> CheckResult:
        """`POST /check`: approve or deny `order`."""
        return await self._call("POST", "/check", CheckResult, body=order)

    async def signed_state(self, *, timeout_s: float | None = None) -> SignedState:
        """`GET /state`, read for its signed state only; `MalformedAnswer` if it is unsigned."""
        answer = await self._call("GET", "/state", SignedStatePublic, timeout_s=timeout_s)
        return answer.to_signed_state()

    async def state(self) -> StatePublic:
        """`GET /state`: the trading state with its reason, limits and what it is judged on."""
        return await self._call("GET", "/state", StatePublic)

    async def kill_switch(self, request: KillSwitchRequest) -> StatePublic:
        """`POST /kill-switch`: halt trading (needs the bearer token)."""
        return await self._call("POST", "/kill-switch", StatePublic, body=request)

    async def resume(self, request: OperatorRequest) -> StatePublic:
        """`POST /resume`: back to ACTIVE (needs the bearer token)."""
        return await self._call("POST", "/resume", StatePublic, body=request)
