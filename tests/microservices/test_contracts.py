"""Every route declares its request and response with the contract models its callers import.

A model declared again in a service's `api.py`, or a route whose body or answer is no longer
the one a typed client sends or parses, fails here; `tests/acceptance/test_contracts.py` runs
the same clients against the real services.
"""

from __future__ import annotations

import typing
from types import ModuleType

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from microservices.ai_engine import api as ai_engine_api
from microservices.contracts import (
    UpstreamError,
    ai_engine,
    execution,
    portfolio_intelligence,
    position_monitor,
    risk_safety,
    rl_training,
)
from microservices.contracts import trading_bot as trading_bot_contract
from microservices.execution import api as execution_api
from microservices.portfolio_intelligence import api as portfolio_api
from microservices.position_monitor import api as position_monitor_api
from microservices.risk_safety import api as risk_safety_api
from microservices.rl_training import api as rl_training_api
from microservices.trading_bot import api as trading_bot_api

ROUTERS: list[tuple[APIRouter, ModuleType]] = [
    (execution_api.router, execution),
    (risk_safety_api.router, risk_safety),
    (portfolio_api.router, portfolio_intelligence),
    (ai_engine_api.router, ai_engine),
    (trading_bot_api.router, trading_bot_contract),
    (rl_training_api.router, rl_training),
    (position_monitor_api.router, position_monitor),
]

CLIENT_CALLS = [
    # (router, method, path, what the client sends, what it parses)
    (execution_api.router, "POST", "/orders", execution.OrderCreate, execution.OrderPublic),
    (execution_api.router, "GET", "/exposure", None, execution.ExposurePublic),
    (
        execution_api.router,
        "POST",
        "/risk/state",
        execution.RiskStateIn,
        execution.RiskStateUpdatePublic,
    ),
    (risk_safety_api.router, "POST", "/check", risk_safety.CheckRequest, risk_safety.CheckResult),
    (portfolio_api.router, "GET", "/portfolio", None, portfolio_intelligence.PortfolioPublic),
    (
        ai_engine_api.router,
        "POST",
        "/predict",
        ai_engine.PredictRequest,
        ai_engine.PredictionPublic,
    ),
    (rl_training_api.router, "POST", "/jobs", rl_training.JobCreate, rl_training.JobPublic),
    (rl_training_api.router, "GET", "/jobs/{job_id}", None, rl_training.JobPublic),
    (rl_training_api.router, "POST", "/jobs/{job_id}/cancel", None, rl_training.JobPublic),
    (
        rl_training_api.router,
        "GET",
        "/policies/{version}/artifact",
        None,
        rl_training.PolicyArtifactPublic,
    ),
    (
        position_monitor_api.router,
        "GET",
        "/positions",
        None,
        position_monitor.MonitoredPositionsPublic,
    ),
    (
        position_monitor_api.router,
        "PUT",
        "/positions/{position_id}/stops",
        position_monitor.Stops,
        position_monitor.MonitoredPositionPublic,
    ),
]


def route(router: APIRouter, method: str, path: str) -> APIRoute:
    (found,) = [
        r
        for r in router.routes
        if isinstance(r, APIRoute) and r.path == path and method in r.methods
    ]
    return found


def models_of(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models in `annotation` (`list[QuotePublic]` gives `QuotePublic`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_of(arg)]


@pytest.mark.parametrize(("router", "contract"), ROUTERS)
def test_every_route_speaks_its_services_contract(router: APIRouter, contract: ModuleType) -> None:
    for r in router.routes:
        assert isinstance(r, APIRoute)
        body = r.body_field.field_info.annotation if r.body_field else None
        for model in models_of(r.response_model) + models_of(body):
            assert model.__module__.startswith("microservices.contracts."), (r.path, model)


@pytest.mark.parametrize(("router", "method", "path", "sent", "parsed"), CLIENT_CALLS)
def test_the_typed_clients_send_and_parse_what_the_routes_declare(
    router: APIRouter,
    method: str,
    path: str,
    sent: type[BaseModel] | None,
    parsed: type[BaseModel],
) -> None:
    declared = route(router, method, path)
    assert declared.response_model is parsed
    body = declared.body_field.field_info.annotation if declared.body_field else None
    assert body is sent


def test_the_signed_state_execution_reads_is_part_of_risk_safetys_state() -> None:
    state = risk_safety.StatePublic.model_fields
    for name, field in risk_safety.SignedStatePublic.model_fields.items():
        assert state[name].annotation is field.annotation, name
    answer = route(risk_safety_api.router, "GET", "/state")
    assert answer.response_model is risk_safety.StatePublic


@pytest.mark.parametrize("model", [execution.OrderCreate, risk_safety.CheckRequest])
def test_an_order_with_a_bad_side_is_refused_as_it_always_was(model: type[BaseModel]) -> None:
    order = {"client_order_id": "c-1", "symbol": "BTCUSDT", "side": "HOLD", "quantity": "1"}
    with pytest.raises(ValidationError) as refused:
        model.model_validate(order)
    (error,) = refused.value.errors()
    assert (error["loc"], error["type"]) == (("side",), "literal_error")


async def test_a_typed_client_sends_the_bytes_and_headers_json_encoding_would() -> None:
    """The clients encode a body with its model's own serializer: byte for byte what
    `httpx`'s `json=` sent for the same model, with the same `Content-Type`."""
    import json
    from decimal import Decimal

    import httpx

    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500, text="recorded")

    order = risk_safety.CheckRequest(
        client_order_id="bot-1",
        symbol="BTCUSDT",
        side="BUY",
        quantity=Decimal("0.0120"),
        price=Decimal("1E+2"),
    )
    approval = risk_safety.ApprovalPublic(decision_id="d-1", token="t", expires_ms=5, epoch=2)
    create = execution.OrderCreate(**order.model_dump(exclude={"price"}), approval=approval)
    prices = [Decimal("100.5")] * 21
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        calls = [
            (ai_engine.AiEngineClient(http, "http://ai"), "predict", ("ÉTH", prices)),
            (risk_safety.RiskSafetyClient(http, "http://risk"), "check", (order,)),
            (execution.ExecutionClient(http, "http://execution"), "place_order", (create,)),
        ]
        for client, name, args in calls:
            with pytest.raises(UpstreamError):
                await getattr(client, name)(*args)
    bodies = [
        ai_engine.PredictRequest(symbol="ÉTH", prices=prices),
        order,
        create,
    ]
    urls = ["http://ai/predict", "http://risk/check", "http://execution/orders"]
    for request, model, url in zip(sent, bodies, urls, strict=True):
        expected = json.dumps(
            model.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")
        ).encode()
        assert (str(request.url), request.content) == (url, expected)
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Content-Length"] == str(len(expected))
