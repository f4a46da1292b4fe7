"""ai-engine as a process: first model trained once and reused, predictions from its artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from backend.infra.db import (
    DatabaseSettings,
    create_engine,
    create_session_factory,
    migrate,
    session_scope,
)
from backend.infra.db.models import ModelVersion
from backend.infra.eventbus import EventBusSettings, create_redis_client
from backend.trading.features import WINDOW, compute_features
from backend.trading.model import (
    InvalidModelArtifact,
    artifact_to_json,
    predict,
    simulate_prices,
    train_initial_model,
)
from microservices.ai_engine.store import load_artifact, register
from tests.acceptance.harness import base_env, http, json_lines, poll, service
from tests.support.otlp import OtlpReceiver
from tests.support.procs import Proc, free_port

SERVER = 2


async def stored_row(url: str, version: str) -> ModelVersion:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with session_scope(create_session_factory(engine)) as session:
            rows = await session.execute(
                select(ModelVersion).where(ModelVersion.version == version)
            )
            return rows.scalar_one()
    finally:
        await engine.dispose()


def messages(lines: list[dict[str, Any]]) -> list[str]:
    return [line["message"] for line in lines]


def logged_once(proc: Proc, message: str) -> list[str]:
    """The process's messages once `message` is among them (INFO lines are written by the
    log sink's thread, within 200 ms of the call)."""

    def found() -> list[str] | None:
        lines = messages(json_lines(proc))
        return lines if message in lines else None

    result: list[str] = poll(found, 5, f"the line {message!r}")
    return result


async def test_the_first_model_is_trained_once_and_served_from_its_artifact_after_restart(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(redis_url, None) | {"AI_TRAIN_STEPS": "3000", "AI_HOLD_BAND": "0"}
    prices = [f"{p:.2f}" for p in simulate_prices(seed=99, steps=40)]

    with service("ai-engine", tmp_path, env) as (proc, url):
        registry = httpx.get(f"{url}/models").json()
        (entry,) = registry["data"]
        assert entry["stage"] == "active" and entry["serving"] is True
        assert registry["serving"] == entry["version"]
        assert entry["metrics"]["training_steps"] == 3000
        assert "holdout_accuracy" in entry["metrics"]
        first = http.post(f"{url}/predict", json={"symbol": "BTCUSDT", "prices": prices}).json()
        logged_once(proc, "initial model trained and registered")

    with service("ai-engine", tmp_path, env) as (proc, url):
        registry = httpx.get(f"{url}/models").json()
        assert [m["version"] for m in registry["data"]] == [entry["version"]]
        assert httpx.get(f"{url}/models/{entry['version']}").json()["stage"] == "active"
        assert httpx.get(f"{url}/models/nope").status_code == 404
        again = http.post(f"{url}/predict", json={"symbol": "BTCUSDT", "prices": prices}).json()
        logged = logged_once(proc, "model loaded")
        assert "no model registered; training the initial model" not in logged

    # The artifact lives in the registry row, with its digest, and no file was written.
    assert entry["artifact_uri"] is None
    assert not (tmp_path / "models").exists()
    row = await stored_row(f"sqlite+aiosqlite:///{tmp_path}/db/ai-engine.db", entry["version"])
    assert row.artifact is not None
    assert entry["artifact_sha256"] == row.artifact_sha256
    assert row.artifact_sha256 == hashlib.sha256(row.artifact.encode()).hexdigest()

    # The prediction is the artifact's, computed by the shared feature code.
    artifact = load_artifact(row)
    expected = predict(artifact, compute_features([float(p) for p in prices]), hold_band=0)
    assert again == first
    assert first["model_version"] == entry["version"] == artifact["version"]
    assert first["direction"] == expected.direction
    assert first["confidence"] == pytest.approx(expected.confidence, rel=1e-12)


def test_predictions_are_traced_counted_and_validated(redis_url: str, tmp_path: Path) -> None:
    prices = [f"{p:.2f}" for p in simulate_prices(seed=5, steps=WINDOW)]
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint) | {"AI_TRAIN_STEPS": "3000"}
        with service("ai-engine", tmp_path, env) as (proc, url):
            body = {"symbol": "ETHUSDT", "prices": prices, "source_id": "tick-1"}
            signal = http.post(f"{url}/predict", json=body).json()
            same = http.post(f"{url}/predict", json=body).json()
            assert same["signal_id"] == signal["signal_id"], "same model, symbol, source: same id"
            short = http.post(f"{url}/predict", json={"symbol": "ETHUSDT", "prices": ["1"] * 5})
            assert short.status_code == 422
            metrics = httpx.get(f"{url}/metrics").text
            assert f'ai_predictions_total{{direction="{signal["direction"]}"}} 2.0' in metrics
            assert "ai_signal_confidence_count 2.0" in metrics
            assert "ai_prediction_latency_seconds_count 2.0" in metrics
            spans = otlp.wait_for(lambda s: sum(x.name == "signal" for x in s) >= 2)
            log = poll(
                lambda: [line for line in json_lines(proc) if line["message"] == "signal"] or None,
                5,
                "the signal's log line",
            )
    (span, *_) = [s for s in spans if s.name == "signal"]
    assert span.attributes["symbol"] == "ETHUSDT"
    assert span.attributes["direction"] == signal["direction"]
    assert span.attributes["confidence"] == pytest.approx(signal["confidence"])
    assert span.attributes["model_version"] == signal["model_version"]
    (server,) = [s for s in spans if s.span_id == span.parent_span_id]
    assert server.kind == SERVER and server.resource["service.name"] == "ai-engine"
    assert log[0]["trace_id"] == span.trace_id


def tamper(text: str) -> str:
    """The same artifact with another intercept: still valid JSON and a valid artifact."""
    data = json.loads(text)
    data["intercept"] += 0.5
    return json.dumps(data, sort_keys=True)


def _row(artifact: dict[str, Any]) -> ModelVersion:
    text = artifact_to_json(artifact)
    return ModelVersion(
        name="direction",
        version=artifact["version"],
        artifact=text,
        artifact_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def test_a_stored_artifact_is_data_checked_against_its_digest() -> None:
    artifact = train_initial_model(1, steps=1_000)
    row = _row(artifact)
    assert load_artifact(row) == json.loads(json.dumps(artifact))

    assert row.artifact is not None
    row.artifact = tamper(row.artifact)
    with pytest.raises(InvalidModelArtifact, match=r"does not match its sha256 \(recorded"):
        load_artifact(row)


def test_an_artifact_is_refused_when_it_is_not_the_rows_version() -> None:
    row = _row(train_initial_model(1, steps=1_000))
    row.version = "logreg-sim-other"
    with pytest.raises(InvalidModelArtifact, match="is version 'logreg-sim-"):
        load_artifact(row)


def test_a_model_registered_before_stored_artifacts_loads_from_its_file(tmp_path: Path) -> None:
    artifact = train_initial_model(1, steps=1_000)
    text = artifact_to_json(artifact)
    path = tmp_path / "model.json"
    path.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    row = ModelVersion(
        name="direction",
        version=artifact["version"],
        artifact_uri=f"{path.as_uri()}#sha256={digest}",
    )
    assert load_artifact(row) == json.loads(text)
    path.write_text(text.replace('"intercept": ', '"intercept": 1e-9 + '))
    with pytest.raises(InvalidModelArtifact, match="sha256"):
        load_artifact(row)


async def test_a_second_replica_serves_the_registered_model_without_training_or_files(
    redis_url: str, tmp_path: Path, database_url: str
) -> None:
    env = base_env(redis_url, None) | {"AI_TRAIN_STEPS": "3000", "DATABASE_URL": database_url}
    prices = [f"{p:.2f}" for p in simulate_prices(seed=11, steps=WINDOW)]
    body = {"symbol": "BTCUSDT", "prices": prices, "source_id": "tick-7"}
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    with service("ai-engine", first_dir, env) as (first, first_url):
        version = httpx.get(f"{first_url}/models").json()["serving"]
        # The second replica shares nothing with the first but the database: its MODEL_DIR is
        # a fresh empty directory.
        (second_dir / "models").mkdir(parents=True)
        with service("ai-engine", second_dir, env) as (second, second_url):
            assert httpx.get(f"{second_url}/models").json()["serving"] == version
            from_second = http.post(f"{second_url}/predict", json=body).json()
            logged = logged_once(second, "model loaded")
        from_first = http.post(f"{first_url}/predict", json=body).json()
    assert "initial model trained and registered" in messages(json_lines(first))
    assert "no model registered; training the initial model" not in logged
    assert from_second == from_first and from_second["model_version"] == version
    assert not (first_dir / "models").exists()
    assert list((second_dir / "models").iterdir()) == []

    # Without MODEL_DIR at all, the same.
    no_dir_env = env | {"MODEL_DIR": ""}
    with service("ai-engine", tmp_path / "third", no_dir_env) as (third, third_url):
        assert http.post(f"{third_url}/predict", json=body).json() == from_first
        assert "no model registered; training the initial model" not in messages(json_lines(third))


async def test_a_tampered_artifact_is_refused_and_nothing_is_served(
    redis_url: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    artifact = train_initial_model(3, steps=1_000)
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        async with session_scope(create_session_factory(engine)) as session:
            row = await register(session, "direction", artifact, promote=True)
            assert row.artifact is not None
            await session.execute(
                update(ModelVersion)
                .where(ModelVersion.id == row.id)
                .values(artifact=tamper(row.artifact))
            )
    finally:
        await engine.dispose()

    port = free_port()
    env = base_env(redis_url, None) | {"DATABASE_URL": url, "PORT": str(port)}
    (tmp_path / "logs").mkdir()
    proc = Proc(["microservices/ai_engine/main.py"], env, tmp_path / "logs" / "ai-engine.log")
    try:
        ready = poll(
            lambda: (
                (r := _get(f"http://127.0.0.1:{port}/health/ready")) is not None
                and "sha256" in r.text
                and r
            ),
            30,
            "readiness to report the refused artifact",
        )
        assert ready.status_code == 503
        assert (
            f"version {artifact['version']!r}: stored artifact does not match its sha256"
            in (ready.json()["checks"]["startup"]["error"])
        )
        refused = http.post(
            f"http://127.0.0.1:{port}/predict",
            json={"symbol": "BTCUSDT", "prices": ["1"] * WINDOW},
        )
        assert refused.status_code == 503
    finally:
        proc.stop()
    logged = messages(json_lines(proc))
    assert "no model registered; training the initial model" not in logged
    assert "model loaded" not in logged


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


async def test_a_newly_promoted_model_is_served_without_a_restart(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(redis_url, None) | {"AI_TRAIN_STEPS": "3000", "AI_MODEL_REFRESH_S": "0.2"}
    prices = [f"{p:.2f}" for p in simulate_prices(seed=3, steps=WINDOW)]
    with service("ai-engine", tmp_path, env) as (_proc, url):
        first = httpx.get(f"{url}/models").json()["serving"]
        challenger = train_initial_model(8, steps=2_000)
        engine = create_engine(
            DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/db/ai-engine.db")
        )
        try:
            async with session_scope(create_session_factory(engine)) as session:
                await register(session, "direction", challenger, promote=True)
        finally:
            await engine.dispose()
        poll(
            lambda: httpx.get(f"{url}/models").json()["serving"] == challenger["version"],
            10,
            "the promoted model to serve",
        )
        signal = http.post(f"{url}/predict", json={"symbol": "SOLUSDT", "prices": prices}).json()
        stages = {m["version"]: m["stage"] for m in httpx.get(f"{url}/models").json()["data"]}
    assert signal["model_version"] == challenger["version"] != first
    assert stages == {first: "retired", challenger["version"]: "active"}


async def test_each_signal_is_announced_on_the_bus_in_the_prediction_trace(
    redis_url: str, tmp_path: Path
) -> None:
    """Announced after the answer (the bot on its way to an order does not wait for the bus),
    but announced all the same, as a child of the prediction's server span."""
    prices = [f"{p:.2f}" for p in simulate_prices(seed=6, steps=WINDOW)]
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint) | {"AI_TRAIN_STEPS": "3000"}
        with service("ai-engine", tmp_path, env) as (_proc, url):
            body = {"symbol": "SOLUSDT", "prices": prices, "source_id": "tick-announce"}
            signal = http.post(f"{url}/predict", json=body).json()
            spans = otlp.wait_for(lambda got: any(s.name == "send signal.generated" for s in got))
    client = create_redis_client(redis_url)
    try:
        key = EventBusSettings(prefix=env["EVENTBUS_PREFIX"]).stream_key("signal.generated")
        entries = await client.xrange(key)
    finally:
        await client.aclose()
    announced = [json.loads(fields[b"event"]) for _id, fields in entries]
    assert [e["data"]["signal_id"] for e in announced] == [signal["signal_id"]]
    (send,) = [s for s in spans if s.name == "send signal.generated"]
    (server,) = [s for s in spans if s.span_id == send.parent_span_id]
    assert server.kind == SERVER and server.name.startswith("POST /predict")
