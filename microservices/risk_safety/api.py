"""risk-safety's HTTP API: pre-trade checks, the trading state, kill switch, resume, decisions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from backend.infra.service import Price, Quantity, provided
from backend.trading.risk import TradingState
from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Side, Symbol, TimeInForce

from .guard import RiskGuard, StatePush, StateView, now_ms

router = APIRouter()


class CheckRequest(BaseModel):
    """An order to check. It is judged at risk-safety's own quotes; `price` is only recorded.

    `price` (the caller's idea of the market price) is still accepted so that older clients
    keep working, and it is written to the decision for the audit trail.
    """

    model_config = ConfigDict(extra="ignore")

    client_order_id: str = Field(min_length=1, max_length=64)
    symbol: str = Field(min_length=1, max_length=32)
    side: Literal["BUY", "SELL"]
    quantity: Quantity
    price: Price | None = None
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: Price | None = None
    time_in_force: Literal["GTC", "IOC"] = "GTC"
    reduce_only: bool = False

    def to_request(self) -> OrderRequest:
        return OrderRequest(
            client_order_id=ClientOrderId(self.client_order_id),
            symbol=Symbol(self.symbol),
            side=Side(self.side),
            quantity=self.quantity,
            order_type=OrderType(self.order_type),
            limit_price=self.limit_price,
            time_in_force=TimeInForce(self.time_in_force),
            reduce_only=self.reduce_only,
        )


class ApprovalPublic(BaseModel):
    decision_id: str
    token: str
    expires_ms: int
    epoch: int


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
    portfolio: PortfolioStatus
    exposure: ExposureStatus
    quotes: list[QuotePublic]
    limits: dict[str, Any]


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


Guard = Annotated[RiskGuard, Depends(provided(RiskGuard))]


def _ack(push: StatePush | None) -> ExecutionAck | None:
    if push is None:
        return None
    return ExecutionAck(acknowledged=push.acknowledged, canceled=push.canceled, error=push.error)


def _state_public(guard: RiskGuard, view: StateView) -> StatePublic:
    fetch = guard.last_fetch
    exposure = guard.last_exposure
    limits = guard.limits
    now = now_ms()
    return StatePublic(
        state=view.state.value,
        reason=view.reason,
        changed_at=view.changed_at,
        changed=view.changed,
        epoch=view.epoch,
        state_token=guard.state_token(view.state, view.epoch),
        execution=_ack(view.execution),
        event=view.event,
        exposure=ExposureStatus(
            url=guard.execution_url,
            reachable=exposure.ok if exposure else None,
            checked_at_ms=exposure.at_ms if exposure else None,
            fill_sequence=exposure.fill_sequence if exposure else None,
            error=exposure.error if exposure else None,
        ),
        quotes=[
            QuotePublic(symbol=s, bid=q.bid, ask=q.ask, age_ms=now - q.as_of_ms)
            for s, q in sorted(guard.quotes().items())
        ],
        portfolio=PortfolioStatus(
            url=guard.portfolio_url,
            reachable=fetch.ok if fetch else None,
            checked_at_ms=fetch.at_ms if fetch else None,
            age_ms=fetch.age_ms if fetch else None,
            error=fetch.error if fetch else None,
        ),
        limits={
            "max_order_notional": str(limits.max_order_notional),
            "max_position_quantity": str(limits.max_position_quantity),
            "position_limits": {s: str(q) for s, q in limits.position_quantity_overrides.items()},
            "max_gross_exposure": str(limits.max_gross_exposure),
            "max_daily_loss": str(limits.max_daily_loss),
            "max_drawdown_fraction": str(limits.max_drawdown_fraction),
            "max_orders_per_window": limits.max_orders_per_window,
            "order_window_ms": limits.order_window_ms,
            "price_band_bps": str(limits.price_band_bps),
            "max_portfolio_age_ms": limits.max_portfolio_age_ms,
            "max_quote_age_ms": limits.max_quote_age_ms,
            "max_fill_lag_ms": limits.max_fill_lag_ms,
            "slippage_bps": str(limits.slippage_bps),
            "taker_fee_bps": str(limits.taker_fee_bps),
            "approval_ttl_ms": guard.settings.approval_ttl_ms,
        },
    )


@router.post("/check")
async def check_order(body: CheckRequest, guard: Guard) -> CheckResult:
    """Approve or deny an order with a standard reason code; approvals carry a signed token."""
    verdict = await guard.check(body.to_request(), body.price)
    approval = verdict.approval
    return CheckResult(
        approved=verdict.approved,
        reason=verdict.reason.value,
        detail=verdict.detail,
        decision_id=verdict.decision_id,
        approval=ApprovalPublic(
            decision_id=approval.decision_id,
            token=approval.token,
            expires_ms=approval.expires_ms,
            epoch=approval.epoch,
        )
        if approval
        else None,
        state=verdict.state.value,
    )


@router.get("/state")
async def get_state(guard: Guard) -> StatePublic:
    return _state_public(guard, guard.state())


@router.get("/state/changes")
async def get_state_changes(
    guard: Guard, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> StateChangesPublic:
    """The audit trail of trading-state changes, newest first."""
    rows = await guard.store.changes(limit=limit)
    data = [
        StateChangePublic(
            from_state=r.from_mode,
            state=r.to_mode,
            reason=r.reason,
            actor=r.actor,
            trace_id=r.trace_id,
            changed_at=r.changed_at,
        )
        for r in rows
    ]
    return StateChangesPublic(data=data, count=len(data))


@router.post("/kill-switch")
async def kill_switch(body: KillSwitchRequest, guard: Guard) -> StatePublic:
    """Halt trading: from now on only orders that reduce a position pass.

    Execution is told first (its answer is `execution`), then the halt is committed.
    """
    view = await guard.set_state(TradingState.HALTED, actor=body.operator, reason=body.reason)
    return _state_public(guard, view)


@router.post("/resume")
async def resume(body: OperatorRequest, guard: Guard) -> StatePublic:
    """Back to ACTIVE; the operator and the reason are recorded."""
    view = await guard.set_state(TradingState.ACTIVE, actor=body.operator, reason=body.reason)
    return _state_public(guard, view)


@router.get("/decisions")
async def get_decisions(
    guard: Guard,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    approved: Annotated[bool | None, Query()] = None,
) -> DecisionsPublic:
    """Persisted decisions, newest first."""
    rows = await guard.store.decisions(limit=limit, approved=approved)
    data = []
    for r in rows:
        reason = r.reasons[0] if r.reasons else {}
        data.append(
            DecisionPublic(
                decision_id=str(r.id),
                client_order_id=r.client_order_id,
                symbol=r.symbol,
                side=r.side,
                quantity=r.quantity,
                approved=r.approved,
                reason=reason.get("code", ""),
                detail=reason.get("detail", ""),
                state=reason.get("state"),
                epoch=reason.get("epoch"),
                reference_price=reason.get("reference_price"),
                caller_price=reason.get("caller_price"),
                trace_id=r.trace_id,
                decided_at=r.decided_at,
            )
        )
    return DecisionsPublic(data=data, count=len(data))
