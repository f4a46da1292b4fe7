"""ai-engine's `POST /predict` on the path from a tick to its order: its body validated once,
its answer encoded once, its `signal` span as before, an unusable request answered as before."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from backend.infra.service import JsonBodyRoute
from backend.trading.features import WINDOW
from backend.trading.model import simulate_prices
from microservices.ai_engine.api import router
from microservices.ai_engine.service import create_service
from microservices.contracts.ai_engine import PredictionPublic
from tests.support.inprocess import ServiceHarness


@pytest.fixture(autouse=True)
def quick_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_TRAIN_STEPS", "3000")


def test_a_prediction_is_answered_without_dependency_solving_and_traced_as_before(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    (route,) = [r for r in router.routes if getattr(r, "path", None) == "/predict"]
    assert isinstance(route, JsonBodyRoute)
    prices = [f"{p:.2f}" for p in simulate_prices(seed=5, steps=WINDOW)]
    with harness.run(create_service) as client:
        body = {"symbol": "ETHUSDT", "prices": prices, "source_id": "tick-1"}
        answer = client.post("/predict", json=body)
        unusable = client.post("/predict", json={"symbol": "ETHUSDT", "prices": ["0"] * WINDOW})
        short = client.post("/predict", json={"symbol": "ETHUSDT", "prices": ["1"] * 5})
        mistyped = client.post("/predict", json={"symbol": "ETHUSDT", "prices": "1,2,3"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    signal = PredictionPublic.model_validate_json(answer.content)
    assert signal.symbol == "ETHUSDT" and set(signal.features)
    # A body the model refuses: FastAPI's own 422, field by field, as on a plain route.
    assert mistyped.status_code == 422
    assert mistyped.json()["detail"][0]["loc"] == ["body", "prices"]
    # Prices that give no features: the endpoint's own 422, its reason as the detail.
    assert short.status_code == 422
    assert short.json()["detail"][0]["loc"] == ["body", "prices"]
    assert unusable.status_code == 422 and isinstance(unusable.json()["detail"], str)
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "signal"]
    ok, failed = spans
    assert ok.attributes["signal_id"] == signal.signal_id
    assert ok.attributes["direction"] == signal.direction
    assert ok.attributes["model_version"] == signal.model_version
    assert ok.status.status_code is StatusCode.UNSET
    # A lean span now: the error recorded as every lean span records it, `error.type` included.
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "UnusablePrices"
    assert [e.name for e in failed.events] == ["exception"]
    assert ok.parent is not None
    server = [
        s for s in span_exporter.get_finished_spans() if s.context.span_id == ok.parent.span_id
    ]
    assert [s.name for s in server] == ["POST /predict"]
