"""The risk guard: decides on orders with the domain rules, and owns the trading state."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from backend.infra.eventbus import RiskDecision as RiskDecisionEvent
from backend.infra.eventbus import RiskStateChanged
from backend.infra.observability import BoundLogger, SpanKind, current_traceparent
from backend.infra.service import Resources, service_url
from backend.trading.approval import Approval, sign_approval
from backend.trading.risk import (
    PortfolioSnapshot,
    ReasonCode,
    TradingState,
    check_order,
    transition_state,
)
from backend.trading.types import OrderRequest, Symbol

from . import metrics
from .settings import RiskSettings
from .store import RiskStore


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision as POST /check returns it."""

    approved: bool
    reason: ReasonCode
    detail: str
    decision_id: str
    approval: Approval | None
    state: TradingState


@dataclass(frozen=True, slots=True)
class StateView:
    state: TradingState
    reason: str
    changed_at: datetime | None
    changed: bool = False


@dataclass(frozen=True, slots=True)
class PortfolioFetch:
    """The last attempt to read the portfolio, for GET /state."""

    ok: bool
    at_ms: int
    age_ms: int | None = None
    error: str | None = None


class RiskGuard:
    """Pre-trade checks against a fresh portfolio, with the state ACTIVE / REDUCING / HALTED.

    Decisions are serialised (the order-rate window and state changes must see each other);
    the portfolio is fetched before taking the lock. A decision that cannot be persisted is
    never returned as an approval: the request fails instead.
    """

    def __init__(
        self,
        settings: RiskSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits()
        self.store = RiskStore(resources)
        self.log = logger
        self.portfolio_url = service_url("portfolio-intelligence")
        self.last_fetch: PortfolioFetch | None = None
        self._resources = resources
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self._state = TradingState.ACTIVE
        self._state_reason = ""
        self._state_changed_at: datetime | None = None
        self._approvals: deque[int] = deque()

    async def restore(self, _resources: Resources | None = None) -> None:
        """Load the persisted trading state and the approvals of the order-rate window."""
        row = await self.store.state()
        if row is not None:
            self._state = TradingState(row.mode)
            self._state_reason = row.reason
            self._state_changed_at = row.updated_at
        since = datetime.now(UTC) - timedelta(milliseconds=self.limits.order_window_ms)
        times = sorted(int(t.timestamp() * 1000) for t in await self.store.approvals_since(since))
        self._approvals = deque(times)
        self._set_state_gauge()
        self.log.info("risk state restored", state=self._state.value, reason=self._state_reason)

    # Decisions --------------------------------------------------------------------------------

    async def check(self, order: OrderRequest, reference_price: Decimal | None) -> Verdict:
        """Decide on `order`; persist and publish the decision; sign an approval if approved."""
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "risk.check",
            kind=SpanKind.INTERNAL,
            attributes={
                "client_order_id": order.client_order_id,
                "symbol": order.symbol,
                "side": order.side.value,
                "quantity": str(order.quantity),
                "order_type": order.order_type.value,
                "reduce_only": order.reduce_only,
            },
        ) as span:
            snapshot = await self._fetch_portfolio()
            async with self._lock:
                now = now_ms()
                self._trim_window(now)
                decision = check_order(
                    order,
                    snapshot,
                    self._state,
                    self._approvals,
                    now,
                    self.limits,
                    reference_price=reference_price,
                )
                detail = decision.detail
                if snapshot is None and self.last_fetch is not None and self.last_fetch.error:
                    detail = f"portfolio unavailable: {self.last_fetch.error}"
                if decision.recommended_state is not None and snapshot is not None:
                    await self._change_state(
                        decision.recommended_state,
                        actor="risk-safety",
                        reason=self._breach(decision.recommended_state, snapshot),
                    )
                traceparent = current_traceparent()
                decision_id = await self.store.record_decision(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    side=order.side.value,
                    quantity=order.quantity,
                    approved=decision.approved,
                    reason={
                        "code": decision.reason.value,
                        "detail": detail,
                        "state": self._state.value,
                        "reference_price": str(reference_price),
                        "order_type": order.order_type.value,
                        "limit_price": str(order.limit_price) if order.limit_price else None,
                        "reduce_only": order.reduce_only,
                    },
                    trace_id=traceparent.split("-")[1] if traceparent else None,
                    decided_at=datetime.fromtimestamp(now / 1000, UTC),
                )
                approval = None
                if decision.approved:
                    self._approvals.append(now)
                    approval = sign_approval(
                        self.settings.approval_secret.get_secret_value(),
                        decision_id=decision_id,
                        order=order,
                        epoch=0,
                        expires_ms=now + self.settings.approval_ttl_ms,
                    )
                state = self._state
            span.set_attributes(
                {
                    "approved": decision.approved,
                    "reason": decision.reason.value,
                    "decision_id": decision_id,
                    "trading_state": state.value,
                }
            )
            log = self.log.info if decision.approved else self.log.warning
            log(
                "order approved" if decision.approved else "order denied",
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side.value,
                quantity=order.quantity,
                reason=decision.reason.value,
                detail=detail,
                decision_id=decision_id,
                state=state.value,
            )
            metrics.DECISIONS.labels(str(decision.approved).lower(), decision.reason.value).inc()
            if not decision.approved:
                metrics.DENIALS.labels(decision.reason.value).inc()
            metrics.CHECK_DURATION.observe(time.perf_counter() - started)
            await self._resources.publisher.publish(
                RiskDecisionEvent(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    approved=decision.approved,
                    reason_code=decision.reason.value,
                    detail=detail,
                )
            )
        return Verdict(decision.approved, decision.reason, detail, decision_id, approval, state)

    async def _fetch_portfolio(self) -> PortfolioSnapshot | None:
        """The portfolio as risk needs it; None (and the error kept) when it cannot be read."""
        http = self._resources.http
        assert http is not None
        fetched_ms = now_ms()
        try:
            response = await http.get(f"{self.portfolio_url}/portfolio")
            response.raise_for_status()
            body = response.json()
            snapshot = PortfolioSnapshot(
                as_of_ms=int(body["as_of_ms"]),
                equity=Decimal(body["equity"]),
                peak_equity=Decimal(body["peak_equity"]),
                daily_pnl=Decimal(body["daily_pnl"]),
                gross_exposure=Decimal(body["gross_exposure"]),
                positions={Symbol(p["symbol"]): Decimal(p["quantity"]) for p in body["positions"]},
            )
        # Anything that stops us reading the portfolio means "no portfolio": fail closed.
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.last_fetch = PortfolioFetch(False, fetched_ms, error=error)
            metrics.PORTFOLIO_REACHABLE.set(0)
            self.log.warning("portfolio unavailable", url=self.portfolio_url, error=error)
            return None
        age_ms = fetched_ms - snapshot.as_of_ms
        self.last_fetch = PortfolioFetch(True, fetched_ms, age_ms=age_ms)
        metrics.PORTFOLIO_REACHABLE.set(1)
        metrics.PORTFOLIO_AGE.set(age_ms / 1000)
        return snapshot

    def _breach(self, target: TradingState, snapshot: PortfolioSnapshot) -> str:
        """Why a loss limit moved trading to `target`, for the audit trail."""
        if target is TradingState.HALTED:
            drawdown = (snapshot.peak_equity - snapshot.equity) / snapshot.peak_equity
            return (
                f"DRAWDOWN: equity {snapshot.equity} is {drawdown:.4f} below peak "
                f"{snapshot.peak_equity}, max {self.limits.max_drawdown_fraction}"
            )
        return (
            f"DAILY_LOSS: daily pnl {snapshot.daily_pnl}, "
            f"max daily loss {self.limits.max_daily_loss}"
        )

    def _trim_window(self, now: int) -> None:
        start = now - self.limits.order_window_ms
        while self._approvals and self._approvals[0] <= start:
            self._approvals.popleft()

    # Trading state ----------------------------------------------------------------------------

    def state(self) -> StateView:
        return StateView(self._state, self._state_reason, self._state_changed_at)

    async def set_state(self, target: TradingState, *, actor: str, reason: str) -> StateView:
        """Move to `target` on an operator's request (kill switch, resume); audited."""
        with self._tracer.start_as_current_span(
            "risk.state_change",
            kind=SpanKind.INTERNAL,
            attributes={"trading_state": target.value, "actor": actor, "reason": reason},
        ) as span:
            async with self._lock:
                if target is self._state:
                    span.set_attribute("changed", False)
                    return self.state()
                await self._change_state(target, actor=actor, reason=reason)
                span.set_attribute("changed", True)
                return StateView(
                    self._state, self._state_reason, self._state_changed_at, changed=True
                )

    async def _change_state(self, target: TradingState, *, actor: str, reason: str) -> None:
        previous = self._state
        transition_state(previous, target)
        traceparent = current_traceparent()
        row = await self.store.change_state(
            from_mode=previous.value,
            to_mode=target.value,
            reason=reason,
            actor=actor,
            trace_id=traceparent.split("-")[1] if traceparent else None,
        )
        self._state = target
        self._state_reason = reason
        self._state_changed_at = row.updated_at
        self._set_state_gauge()
        metrics.STATE_CHANGES.labels(target.value).inc()
        self.log.warning(
            "trading state changed",
            previous_state=previous.value,
            state=target.value,
            actor=actor,
            reason=reason,
        )
        await self._resources.publisher.publish(
            RiskStateChanged(previous_state=previous.value, state=target.value, reason=reason)
        )

    def _set_state_gauge(self) -> None:
        for state in TradingState:
            metrics.TRADING_STATE.labels(state.value).set(1 if state is self._state else 0)
