"""position-monitor's neighbours (risk-safety, execution, portfolio-intelligence) stubbed by one
server that answers with their contract models.

The stub keeps orders by client order id as execution does (the same id again answers the
order it has), and can deny checks, refuse orders or lose their answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from backend.trading.types import ZERO
from microservices.contracts.execution import FillPublic, OrderCreate, OrderPublic
from microservices.contracts.portfolio_intelligence import PortfolioPublic
from microservices.contracts.risk_safety import ApprovalPublic, CheckRequest, CheckResult
from tests.acceptance.harness import StubServer
from tests.support.inprocess import ServiceHarness
from tests.support.wire import portfolio_answer

D = Decimal


@dataclass
class Upstreams:
    """What the stubs answer, and what they were sent."""

    held: dict[str, Decimal] = field(default_factory=dict)
    deny: bool = False
    refuse_orders: set[str] = field(default_factory=set)
    lose_answers: int = 0
    checks: list[str] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    orders: dict[str, OrderPublic] = field(default_factory=dict)


def filled(order: OrderCreate, price: Decimal) -> OrderPublic:
    now = datetime.now(UTC)
    return OrderPublic(
        client_order_id=order.client_order_id,
        status="FILLED",
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        filled_quantity=order.quantity,
        avg_fill_price=price,
        order_type=order.order_type,
        limit_price=None,
        time_in_force=order.time_in_force,
        reduce_only=order.reduce_only,
        reason="",
        risk_decision_id=order.approval.decision_id if order.approval else None,
        created_at=now,
        updated_at=now,
        fills=[
            FillPublic(
                fill_id=f"f-{order.client_order_id}",
                sequence=len(now.isoformat()),
                quantity=order.quantity,
                price=price,
                fee=ZERO,
                liquidity="TAKER",
                filled_at=now,
            )
        ],
    )


def stub_app(state: Upstreams) -> FastAPI:
    app = FastAPI()

    @app.get("/portfolio")
    async def portfolio() -> PortfolioPublic:
        return portfolio_answer(D(100_000), {s: q for s, q in state.held.items() if q})

    @app.post("/check")
    async def check(body: CheckRequest) -> CheckResult:
        state.checks.append(body.client_order_id)
        if state.deny:
            return CheckResult(
                approved=False,
                reason="STALE_PORTFOLIO",
                detail="stub",
                decision_id="d",
                approval=None,
                state="HALTED",
            )
        approval = ApprovalPublic(decision_id=f"d-{len(state.checks)}", token="t", expires_ms=1)
        return CheckResult(
            approved=True, reason="", detail="", decision_id="d", approval=approval, state="ACTIVE"
        )

    @app.post("/orders", response_model=None)
    async def orders(body: OrderCreate) -> Any:
        state.posts.append(body.client_order_id)
        assert body.reduce_only and body.order_type == "MARKET" and body.approval is not None
        if body.client_order_id in state.refuse_orders:
            return JSONResponse({"detail": "trading state is HALTED"}, status_code=403)
        known = state.orders.get(body.client_order_id)
        if known is None:
            known = state.orders[body.client_order_id] = filled(body, D(98))
            state.held[body.symbol] = state.held.get(body.symbol, ZERO) - body.quantity
        if state.lose_answers:
            state.lose_answers -= 1
            return JSONResponse({"detail": "lost"}, status_code=502)
        return known

    return app


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[Upstreams, StubServer]]:
    state = Upstreams()
    with StubServer(stub_app(state)) as server:
        yield state, server


@pytest.fixture
def upstreams(
    stub: tuple[Upstreams, StubServer], harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> Upstreams:
    state, server = stub
    state.__init__()  # type: ignore[misc]
    for name in ("RISK_SAFETY_URL", "EXECUTION_URL", "PORTFOLIO_INTELLIGENCE_URL"):
        monkeypatch.setenv(name, server.url)
    monkeypatch.setenv("MONITOR_CHECK_INTERVAL_MS", "50")
    monkeypatch.setenv("MONITOR_RECONCILE_INTERVAL_MS", "60000")
    return state
