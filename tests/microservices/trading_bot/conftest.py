"""Fixtures for the trading-bot tests: Redis, an OTLP receiver and stubs of the four upstreams.

The stubs read and answer with the services' own contract models, so a contract change the
bot does not follow fails these tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.trading.types import ZERO
from microservices.contracts.ai_engine import PredictionPublic, PredictRequest
from microservices.contracts.execution import OrderCreate, OrderPublic
from microservices.contracts.portfolio_intelligence import PortfolioPublic
from microservices.contracts.risk_safety import ApprovalPublic, CheckRequest, CheckResult
from tests.acceptance.harness import StubServer, base_env, service
from tests.support.otlp import OtlpReceiver
from tests.support.procs import Proc
from tests.support.wire import portfolio_answer


@dataclass
class Bot:
    proc: Proc
    url: str
    prefix: str
    redis: str


@dataclass
class Upstreams:
    """What the stubbed upstream services answer, and what they were sent."""

    signals: dict[str, tuple[str, float]] = field(default_factory=dict)
    equity: Decimal = Decimal(10_000)
    positions: dict[str, Decimal] = field(default_factory=dict)
    booked_sequence: int = 0
    gaps: list[int] = field(default_factory=list)
    deny: dict[str, str] = field(default_factory=dict)
    lose_next_order_replies: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    order_posts: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    traceparents: dict[str, list[str]] = field(default_factory=dict)


def stub_order(order: OrderCreate, status: str) -> OrderPublic:
    """`order` as execution answers it once it is in `status`."""
    now = datetime.now(UTC)
    return OrderPublic(
        client_order_id=order.client_order_id,
        status=status,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        filled_quantity=ZERO,
        avg_fill_price=None,
        order_type=order.order_type,
        limit_price=order.limit_price,
        time_in_force=order.time_in_force,
        reduce_only=order.reduce_only,
        reason="",
        risk_decision_id=order.approval.decision_id if order.approval else None,
        created_at=now,
        updated_at=now,
        fills=[],
    )


def stub_app(state: Upstreams) -> FastAPI:
    app = FastAPI()

    def seen(request: Request, what: str) -> None:
        state.traceparents.setdefault(what, []).append(request.headers.get("traceparent", ""))

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> PredictionPublic:
        seen(request, "predict")
        direction, confidence = state.signals.get(body.symbol, ("HOLD", 0.5))
        digest = hashlib.sha256(f"{body.symbol}|{body.source_id}".encode()).hexdigest()
        return PredictionPublic(
            symbol=body.symbol,
            direction=direction,
            confidence=confidence,
            probability_up=confidence if direction == "BUY" else 1 - confidence,
            model_version="stub-1",
            signal_id=f"sig-{digest[:24]}",
            features={"ret_1": 0.001},
        )

    @app.get("/portfolio")
    async def portfolio(request: Request) -> PortfolioPublic:
        seen(request, "portfolio")
        answer = portfolio_answer(state.equity, state.positions)
        answer.fills.booked_sequence = answer.fills.max_sequence = state.booked_sequence
        answer.fills.gaps = state.gaps
        return answer

    @app.post("/check")
    async def check(body: dict[str, Any], request: Request) -> CheckResult:
        seen(request, "check")
        order = CheckRequest.model_validate(body)
        state.checks.append(body)
        reason = state.deny.get(order.symbol)
        approval = None if reason else ApprovalPublic(decision_id="d1", token="t", expires_ms=0)
        return CheckResult(
            approved=reason is None,
            reason=reason or "APPROVED",
            detail="stub",
            decision_id="d1",
            approval=approval,
            state="ACTIVE",
        )

    @app.post("/orders")
    async def orders(body: dict[str, Any], request: Request) -> JSONResponse:
        seen(request, "orders")
        order = OrderCreate.model_validate(body)
        state.order_posts.append(body)
        existing = state.orders.get(order.client_order_id)
        if existing is None:
            state.orders[order.client_order_id] = body
        if state.lose_next_order_replies > 0:
            # The order is taken, but the reply is lost on the way back.
            state.lose_next_order_replies -= 1
            return JSONResponse({"detail": "upstream timeout"}, status_code=503)
        reply = stub_order(order, "FILLED").model_dump(mode="json")
        return JSONResponse(reply, status_code=200 if existing else 201)

    return app


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[Upstreams, StubServer]]:
    state = Upstreams()
    with StubServer(stub_app(state)) as server:
        yield state, server


@contextmanager
def bot_process(
    redis_url: str,
    otlp: OtlpReceiver,
    stub_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    **settings: str,
) -> Iterator[Bot]:
    """A trading-bot process wired to the stubs, with `settings` over the tests' defaults."""
    env = base_env(redis_url, otlp.http_endpoint) | {
        "AI_ENGINE_URL": stub_url,
        "RISK_SAFETY_URL": stub_url,
        "EXECUTION_URL": stub_url,
        "PORTFOLIO_INTELLIGENCE_URL": stub_url,
        "BOT_DECISION_INTERVAL_MS": "1000",
        "BOT_MIN_CONFIDENCE": "0.6",
        # The tests publish each symbol's ticks in one burst: a decision held for a next tick
        # would never come.
        "BOT_DECISION_HOLD_MS": "0",
        "EVENTBUS_RETRY_BACKOFF_MS": "50",
        **settings,
    }
    with service("trading-bot", tmp_path_factory.mktemp("bot"), env) as (proc, base):
        yield Bot(proc, base, env["EVENTBUS_PREFIX"], redis_url)


@pytest.fixture(scope="module")
def bot(
    redis_url: str,
    otlp: OtlpReceiver,
    stub_server: tuple[Upstreams, StubServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bot]:
    """One trading-bot process for the module, wired to the stubs."""
    with bot_process(redis_url, otlp, stub_server[1].url, tmp_path_factory) as running:
        yield running


@pytest.fixture
def upstreams(stub_server: tuple[Upstreams, StubServer]) -> Upstreams:
    """The stubs' state, fresh for each test."""
    state = stub_server[0]
    fresh = Upstreams()
    for name in fresh.__dataclass_fields__:
        setattr(state, name, getattr(fresh, name))
    return state
