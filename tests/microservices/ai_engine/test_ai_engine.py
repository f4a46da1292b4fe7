"""ai-engine as a process: first model trained once and reused, predictions from its artifact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.trading.features import WINDOW, compute_features
from backend.trading.model import InvalidModelArtifact, predict, simulate_prices
from microservices.ai_engine.registry import read_artifact, write_artifact
from tests.acceptance.harness import base_env, json_lines, poll, redis_url, service
from tests.support.otlp import OtlpReceiver

SERVER = 2


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url


def messages(lines: list[dict[str, Any]]) -> list[str]:
    return [line["message"] for line in lines]


def test_the_first_model_is_trained_once_and_served_from_its_artifact_after_restart(
    redis_server: str, tmp_path: Path
) -> None:
    env = base_env(redis_server, None) | {"AI_TRAIN_STEPS": "3000", "AI_HOLD_BAND": "0"}
    prices = [f"{p:.2f}" for p in simulate_prices(seed=99, steps=40)]

    with service("ai-engine", tmp_path, env) as (proc, url):
        registry = httpx.get(f"{url}/models").json()
        (entry,) = registry["data"]
        assert entry["stage"] == "active" and entry["serving"] is True
        assert registry["serving"] == entry["version"]
        assert entry["metrics"]["training_steps"] == 3000
        assert "holdout_accuracy" in entry["metrics"]
        first = httpx.post(f"{url}/predict", json={"symbol": "BTCUSDT", "prices": prices}).json()
        assert "initial model trained and registered" in messages(json_lines(proc))

    with service("ai-engine", tmp_path, env) as (proc, url):
        registry = httpx.get(f"{url}/models").json()
        assert [m["version"] for m in registry["data"]] == [entry["version"]]
        assert httpx.get(f"{url}/models/{entry['version']}").json()["stage"] == "active"
        assert httpx.get(f"{url}/models/nope").status_code == 404
        again = httpx.post(f"{url}/predict", json={"symbol": "BTCUSDT", "prices": prices}).json()
        logged = messages(json_lines(proc))
        assert "model loaded" in logged
        assert "no model registered; training the initial model" not in logged

    # The prediction is the artifact's, computed by the shared feature code.
    artifact = read_artifact(entry["artifact_uri"])
    expected = predict(artifact, compute_features([float(p) for p in prices]), hold_band=0)
    assert again == first
    assert first["model_version"] == entry["version"] == artifact["version"]
    assert first["direction"] == expected.direction
    assert first["confidence"] == pytest.approx(expected.confidence, rel=1e-12)


def test_predictions_are_traced_counted_and_validated(redis_server: str, tmp_path: Path) -> None:
    prices = [f"{p:.2f}" for p in simulate_prices(seed=5, steps=WINDOW)]
    with OtlpReceiver() as otlp:
        env = base_env(redis_server, otlp.http_endpoint) | {"AI_TRAIN_STEPS": "3000"}
        with service("ai-engine", tmp_path, env) as (proc, url):
            body = {"symbol": "ETHUSDT", "prices": prices, "source_id": "tick-1"}
            signal = httpx.post(f"{url}/predict", json=body).json()
            same = httpx.post(f"{url}/predict", json=body).json()
            assert same["signal_id"] == signal["signal_id"], "same model, symbol, source: same id"
            short = httpx.post(f"{url}/predict", json={"symbol": "ETHUSDT", "prices": ["1"] * 5})
            assert short.status_code == 422
            metrics = httpx.get(f"{url}/metrics").text
            assert f'ai_predictions_total{{direction="{signal["direction"]}"}} 2.0' in metrics
            assert "ai_signal_confidence_count 2.0" in metrics
            assert "ai_prediction_latency_seconds_count 2.0" in metrics
            spans = otlp.wait_for(lambda s: sum(x.name == "signal" for x in s) >= 2)
            log = [line for line in json_lines(proc) if line["message"] == "signal"]
    (span, *_) = [s for s in spans if s.name == "signal"]
    assert span.attributes["symbol"] == "ETHUSDT"
    assert span.attributes["direction"] == signal["direction"]
    assert span.attributes["confidence"] == pytest.approx(signal["confidence"])
    assert span.attributes["model_version"] == signal["model_version"]
    (server,) = [s for s in spans if s.span_id == span.parent_span_id]
    assert server.kind == SERVER and server.resource["service.name"] == "ai-engine"
    assert log[0]["trace_id"] == span.trace_id


def test_an_artifact_is_data_checked_against_its_digest(tmp_path: Path) -> None:
    from backend.trading.model import train_initial_model

    artifact = train_initial_model(1, steps=1_000)
    uri = write_artifact(tmp_path, "direction", artifact)
    assert read_artifact(uri) == json.loads(json.dumps(artifact))
    path = Path(uri.removeprefix("file://").split("#")[0])
    path.write_text(path.read_text().replace('"intercept": ', '"intercept": 1e-9 + '))
    with pytest.raises(InvalidModelArtifact, match="sha256"):
        read_artifact(uri)


async def test_a_newly_promoted_model_is_served_without_a_restart(
    redis_server: str, tmp_path: Path
) -> None:
    from backend.infra.db import (
        DatabaseSettings,
        create_engine,
        create_session_factory,
        session_scope,
    )
    from backend.trading.model import train_initial_model
    from microservices.ai_engine.registry import register

    env = base_env(redis_server, None) | {"AI_TRAIN_STEPS": "3000", "AI_MODEL_REFRESH_S": "0.2"}
    prices = [f"{p:.2f}" for p in simulate_prices(seed=3, steps=WINDOW)]
    with service("ai-engine", tmp_path, env) as (_proc, url):
        first = httpx.get(f"{url}/models").json()["serving"]
        challenger = train_initial_model(8, steps=2_000)
        uri = write_artifact(tmp_path / "models", "direction", challenger)
        engine = create_engine(
            DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/db/ai-engine.db")
        )
        try:
            async with session_scope(create_session_factory(engine)) as session:
                await register(session, "direction", challenger, uri, promote=True)
        finally:
            await engine.dispose()
        poll(
            lambda: httpx.get(f"{url}/models").json()["serving"] == challenger["version"],
            10,
            "the promoted model to serve",
        )
        signal = httpx.post(f"{url}/predict", json={"symbol": "SOLUSDT", "prices": prices}).json()
        stages = {m["version"]: m["stage"] for m in httpx.get(f"{url}/models").json()["data"]}
    assert signal["model_version"] == challenger["version"] != first
    assert stages == {first: "retired", challenger["version"]: "active"}
