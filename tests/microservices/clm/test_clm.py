"""clm and ai-engine's registry aliases as processes: register a challenger, move aliases,
roll back, refuse an expired model; clm's API retrains on demand, promotes and refuses
unauthenticated calls."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import httpx

from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.trading.events import MarketTick
from backend.trading.marketsim import MarketSimulator, SymbolSpec
from backend.trading.model import simulate_prices, train_initial_model
from backend.trading.types import Symbol
from tests.acceptance.harness import base_env, http, poll, service, services

FAST = {"AI_TRAIN_STEPS": "2000", "EVENTBUS_BLOCK_MS": "50"}


def prices() -> list[str]:
    return [f"{p:.2f}" for p in simulate_prices(seed=5, steps=30)]


def test_ai_engine_moves_aliases_swaps_at_once_and_rolls_back(
    redis_url: str, tmp_path: Path
) -> None:
    other = train_initial_model(3, steps=2_000)
    with service("ai-engine", tmp_path, base_env(redis_url, None) | FAST) as (_proc, url):
        seed = httpx.get(f"{url}/models").json()["serving"]
        assert httpx.post(f"{url}/models", json={"artifact": other}).status_code == 401

        bad = http.post(f"{url}/models", json={"artifact": {**other, "scales": [0] * 9}})
        assert bad.status_code == 422 and "scales must be positive" in bad.text
        added = http.post(f"{url}/models", json={"artifact": other, "alias": "challenger"})
        assert added.status_code == 201, added.text
        assert added.json()["alias"] == "challenger" and added.json()["serving"] is False
        assert http.post(f"{url}/models", json={"artifact": other}).status_code == 409
        served = http.post(f"{url}/predict", json={"symbol": "X", "prices": prices()}).json()
        assert served["model_version"] == seed

        artifact = httpx.get(f"{url}/models/{other['version']}/artifact").json()
        assert artifact["artifact"]["coefficients"] == other["coefficients"]
        assert len(artifact["sha256"]) == 64

        missing = http.post(f"{url}/models/aliases/champion", json={"version": "nope"})
        assert missing.status_code == 404
        moved = http.post(
            f"{url}/models/aliases/champion", json={"version": other["version"], "reason": "t"}
        ).json()
        assert moved == {
            "alias": "champion",
            "version": other["version"],
            "previous": seed,
            "serving": other["version"],
        }
        served = http.post(f"{url}/predict", json={"symbol": "X", "prices": prices()}).json()
        assert served["model_version"] == other["version"]
        rows = {m["version"]: m for m in httpx.get(f"{url}/models").json()["data"]}
        assert rows[seed]["stage"] == "retired" and rows[seed]["alias"] is None
        assert rows[other["version"]]["alias"] == "champion"
        assert "ai_model_swaps_total 1.0" in httpx.get(f"{url}/metrics").text

        back = http.post(f"{url}/models/aliases/champion/rollback").json()
        assert back["version"] == seed and back["previous"] == other["version"]
        served = http.post(f"{url}/predict", json={"symbol": "X", "prices": prices()}).json()
        assert served["model_version"] == seed


def test_ai_engine_refuses_a_model_older_than_its_max_age(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, None) | FAST | {"AI_MODEL_MAX_AGE_S": "1"}
    with service("ai-engine", tmp_path, env) as (_proc, url):
        time.sleep(1.5)
        refused = http.post(f"{url}/predict", json={"symbol": "X", "prices": prices()})
        assert refused.status_code == 503
        assert "older than AI_MODEL_MAX_AGE_S=1" in refused.text
        assert "ai_predictions_refused_expired_total 1.0" in httpx.get(f"{url}/metrics").text


def publish_ticks(redis_url: str, prefix: str, n: int) -> None:
    sim = MarketSimulator([SymbolSpec(Symbol("SIM"), Decimal(100))], seed=21)
    ticks = [
        MarketTick(
            symbol=q.symbol, bid=q.bid, ask=q.ask, last=q.last, volume=q.volume, ts_ms=q.ts_ms
        )
        for q in sim.ticks(n)
    ]

    async def send() -> None:
        client = create_redis_client(redis_url)
        try:
            await EventPublisher(client, "test-feed", EventBusSettings(prefix=prefix)).publish_many(
                ticks
            )
        finally:
            await client.aclose()

    asyncio.run(send())


def test_clm_retrains_on_demand_promotes_and_rolls_back(redis_url: str, tmp_path: Path) -> None:
    env = (
        base_env(redis_url, None) | FAST | {"CLM_CHECK_INTERVAL_S": "0.2", "CLM_TRAIN_TICKS": "300"}
    )
    with services(["ai-engine", "clm"], tmp_path, env, timeout_s=90) as running:
        ai, clm = running["ai-engine"][1], running["clm"][1]
        seed = httpx.get(f"{ai}/models").json()["serving"]
        poll(lambda: http.get(f"{clm}/status").json()["champion"] == seed, 10, "clm to follow")
        assert httpx.post(f"{clm}/retrain").status_code == 401
        assert httpx.post(f"{clm}/rollback").status_code == 401

        nothing = http.post(f"{clm}/promote")
        assert nothing.status_code == 409 and "no challenger" in nothing.text
        early = http.post(f"{clm}/retrain", json={"reason": "too early"}).json()
        assert early == {"trigger": "request", "model_version": None}

        publish_ticks(redis_url, env["EVENTBUS_PREFIX"], 400)
        poll(lambda: http.get(f"{clm}/status").json()["live_rows"] >= 300, 20, "clm to see ticks")
        trained = http.post(f"{clm}/retrain", json={"reason": "operator"}).json()
        version = trained["model_version"]
        assert version and version.startswith("logreg-live-")
        rows = {m["version"]: m for m in httpx.get(f"{ai}/models").json()["data"]}
        assert rows[version]["alias"] == "challenger"
        assert rows[version]["metrics"]["training_trigger"] == "request"
        assert httpx.get(f"{ai}/models").json()["serving"] == seed

        promoted = http.post(f"{clm}/promote", json={"reason": "operator"}).json()
        assert promoted == {"model_version": version, "previous_version": seed}
        assert httpx.get(f"{ai}/models").json()["serving"] == version
        status = http.get(f"{clm}/status").json()
        assert status["champion"] == version and status["challenger"] is None
        assert 'clm_promotions_total{reason="forced"} 1.0' in httpx.get(f"{clm}/metrics").text

        back = http.post(f"{clm}/rollback").json()
        assert back == {"model_version": seed, "previous_version": version}
        assert httpx.get(f"{ai}/models").json()["serving"] == seed
        ready = httpx.get(f"{clm}/health/ready")
        assert ready.status_code == 200, ready.text
