"""risk-safety's HTTP API: pre-trade checks, the trading state, kill switch, resume, decisions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from backend.infra.service import JsonBodyRoute, SentAnswer, dependency_unavailable, provided
from backend.trading.risk import TradingState
from microservices.contracts.risk_safety import (
    ApprovalPublic,
    CheckRequest,
    CheckResult,
    DecisionPublic,
    DecisionsPublic,
    ExecutionAck,
    ExposureStatus,
    KillSwitchRequest,
    OperatorRequest,
    PortfolioStatus,
    QuotePublic,
    StateChangePublic,
    StateChangesPublic,
    StatePublic,
)

from .guard import RiskGuard, StateNotRecorded, StatePush, StateView, now_ms

router = APIRouter()


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
        recorded=view.recorded,
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


async def check_order(body: CheckRequest, guard: Guard) -> Response:
    """Approve or deny an order with a standard reason code; approvals carry a signed token."""
    # The decision's event is published by the outbox's relay once this answer is sent (or
    # `OUTBOX_REPLY_HOLD_S` after the commit), not on the way to it.
    hold = guard.store.outbox.hold()
    try:
        verdict = await guard.check(body.to_request(), body.price)
        approval = verdict.approval
        content = CheckResult(
            approved=verdict.approved,
            reason=verdict.reason.value,
            detail=verdict.detail,
            decision_id=verdict.decision_id,
            approval=ApprovalPublic.of(approval) if approval else None,
            state=verdict.state.value,
        ).model_dump_json()
    except BaseException:
        hold.release()
        raise
    return SentAnswer(content.encode(), 200, hold.release)


# The hot path: the body validated once, the guard looked up without dependency solving.
router.add_api_route(
    "/check",
    check_order,
    methods=["POST"],
    response_model=CheckResult,
    route_class_override=JsonBodyRoute,
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

    Execution is told first (its answer is `execution`), then the halt is committed. With the
    database down the halt still takes effect: a 503 naming the database that also says the
    state in force, `recorded: false` and execution's answer; the record follows by itself.
    """
    try:
        view = await guard.set_state(TradingState.HALTED, actor=body.operator, reason=body.reason)
    except StateNotRecorded as exc:
        state = _state_public(guard, exc.view)
        return dependency_unavailable(  # type: ignore[return-value]
            "database",
            str(exc),
            "database_unavailable",
            **state.model_dump(
                mode="json", include={"state", "epoch", "changed", "recorded", "execution"}
            ),
        )
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
