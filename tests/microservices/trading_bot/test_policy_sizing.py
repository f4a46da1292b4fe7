"""trading-bot sizing with rl-training's champion policy: loaded through rl-training's contract
with its sha256 checked, reloaded when the champion changes, the rules (with the reason) when
there is none or it does not check out, and the policy's version on the sizing span."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from backend.infra.observability import get_logger
from backend.trading.features import WINDOW
from backend.trading.rlartifact import artifact_sha256, artifact_to_json
from backend.trading.rlenv import EnvConfig
from backend.trading.rlpolicy import LinearPolicy, policy_artifact
from backend.trading.sizing import SizingParams, size_order, size_order_for_exposure
from microservices.contracts.rl_training import PolicyArtifactPublic
from microservices.trading_bot.policy import ChampionPolicy
from microservices.trading_bot.settings import TradingBotSettings
from tests.acceptance.harness import StubServer, base_env, http, service
from tests.microservices.rl_training.test_rl_training import SMALL_JOB, finished
from tests.support.otlp import OtlpReceiver
from tests.support.procs import free_port

from .conftest import Upstreams
from .test_strategy import publish, ticks, wait_decisions

PARAMS = TradingBotSettings().to_domain()
PRICES = [Decimal(p) for p in ("100", "101", "100.5", "102", "101", "103", "104", "103.5", "105")]


def constant_policy(level_index: int, window: int = 4) -> dict[str, Any]:
    """An artifact whose policy always picks `level_index` (0, ½ or all of equity)."""
    bias = np.zeros(3)
    bias[level_index] = 1.0
    return policy_artifact(
        LinearPolicy(np.zeros((window + 1, 3)), bias),
        EnvConfig(window=window),
        training={"algorithm": "constant", "seed": level_index},
    )


def champion_stub(answer: dict[str, Any]) -> FastAPI:
    """rl-training's champion route, answering whatever `answer["body"]` holds (404 if None)."""
    app = FastAPI()

    @app.get("/policies/champion")
    async def champion() -> Any:
        from fastapi.responses import JSONResponse

        body = answer["body"]
        if body is None:
            return JSONResponse({"detail": "no champion 'sizing' policy yet"}, status_code=404)
        return JSONResponse(body)

    return app


def answer_of(artifact: dict[str, Any], sha256: str | None = None) -> dict[str, Any]:
    text = artifact_to_json(artifact)
    return PolicyArtifactPublic(
        version=artifact["version"],
        artifact_sha256=sha256 or artifact_sha256(text),
        artifact=artifact,
    ).model_dump(mode="json")


def sized(policy: ChampionPolicy, side: str = "BUY", held: Decimal = Decimal(0)) -> Any:
    return policy.size(
        equity=Decimal(10_000),
        held=held,
        price=PRICES[-1],
        confidence=0.8,
        side=side,
        prices=PRICES,
        params=PARAMS,
    )


async def test_the_champion_is_loaded_checked_swapped_and_refused_when_it_does_not_match(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real rl-training: no champion, then one promoted, then another."""
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint)
        with service("rl-training", tmp_path, env) as (_proc, url):
            client = httpx.Client(base_url=url, headers=http.headers, timeout=5.0)
            monkeypatch.setenv("RL_TRAINING_URL", url)
            champion = ChampionPolicy(True, 30.0, get_logger("test"))
            async with httpx.AsyncClient(timeout=5.0) as session:
                await champion.refresh(session)
                assert champion.current is None and "no champion" in champion.unavailable
                rules = sized(champion)
                assert rules.source == "rules" and rules.fallback_reason == champion.unavailable
                assert rules.decision == size_order(Decimal(10_000), PRICES[-1], 0.8, PARAMS)

                first = finished(
                    client, client.post("/jobs", json={**SMALL_JOB, "seed": 11}).json()["id"]
                )
                second = finished(
                    client, client.post("/jobs", json={**SMALL_JOB, "seed": 12}).json()["id"]
                )
                a = first["result"]["policy"]
                b = second["result"]["policy"]
                assert (
                    client.post(f"/policies/{a['version']}/promote").json()["status"] == "champion"
                )
                await champion.refresh(session)
                assert champion.current is not None
                assert (champion.current.version, champion.current.sha256) == (
                    a["version"],
                    a["artifact_sha256"],
                )
                # What the policy does, computed here from the artifact's own numbers.
                artifact = client.get(f"/policies/{a['version']}/artifact").json()["artifact"]
                window = artifact["observation"]["window"]
                last = np.array([float(p) for p in PRICES[-(window + 1) :]])
                obs = np.append(np.clip(np.log(last[1:] / last[:-1]) * 100, -50, 50), 0.0)
                scores = obs @ np.array(artifact["weights"]) + np.array(artifact["bias"])
                target = artifact["levels"][int(np.argmax(scores))]
                by_policy = sized(champion)
                assert by_policy.source == "policy" and by_policy.policy_version == a["version"]
                assert by_policy.target_exposure == target
                assert by_policy.decision == size_order_for_exposure(
                    Decimal(10_000), PRICES[-1], 0.8, PARAMS, side="BUY", target_exposure=target
                )

                # A new champion is picked up at the next refresh; the old one is a candidate.
                client.post(f"/policies/{b['version']}/promote")
                await champion.refresh(session)
                assert champion.current is not None and champion.current.version == b["version"]
                statuses = {
                    p["version"]: p["status"] for p in client.get("/policies").json()["data"]
                }
                assert statuses == {a["version"]: "candidate", b["version"]: "champion"}
                assert client.get("/policies/champion").json()["version"] == b["version"]
                assert client.post("/policies/rl-nope/promote").status_code == 404

            # rl-training gone: the verified policy stays in use.
            monkeypatch.setenv("RL_TRAINING_URL", f"http://127.0.0.1:{free_port()}")
            async with httpx.AsyncClient(timeout=2.0) as session:
                await champion.refresh(session)
            assert champion.current is not None and champion.current.version == b["version"]


async def test_an_artifact_that_does_not_match_its_sha256_is_refused_for_the_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = constant_policy(1)
    tampered = {**good, "bias": [0.0, 0.0, 1.0]}  # all in, under the good one's digest
    answer: dict[str, Any] = {"body": answer_of(good)}
    with StubServer(champion_stub(answer)) as stub:
        monkeypatch.setenv("RL_TRAINING_URL", stub.url)
        champion = ChampionPolicy(True, 30.0, get_logger("test"))
        async with httpx.AsyncClient(timeout=5.0) as session:
            await champion.refresh(session)
            assert champion.current is not None and sized(champion).target_exposure == 0.5
            answer["body"] = answer_of(tampered, sha256="0" * 64)
            await champion.refresh(session)
            assert champion.current is None and "sha256" in champion.unavailable
            fallback = sized(champion)
            assert fallback.source == "rules" and "sha256" in fallback.fallback_reason
            answer["body"] = None
            await champion.refresh(session)
            assert "no champion" in champion.unavailable


def test_off_by_default_and_a_policy_that_wants_out_lets_only_sells_through() -> None:
    assert TradingBotSettings().sizing_policy == "rules"
    assert sized(ChampionPolicy(False, 30.0, get_logger("test"))).source == "rules"
    params = SizingParams(
        equity_fraction=Decimal("0.5"),
        max_notional=Decimal(10**6),
        max_quantity=Decimal(10**6),
        lot_size=Decimal("0.001"),
    )
    flat_buy = size_order_for_exposure(
        Decimal(10_000), Decimal(100), 1.0, params, side="BUY", target_exposure=0.0
    )
    assert flat_buy.quantity == 0 and flat_buy.constraint == "POLICY"
    flat_sell = size_order_for_exposure(
        Decimal(10_000), Decimal(100), 1.0, params, side="SELL", target_exposure=0.0
    )
    assert flat_sell == size_order(Decimal(10_000), Decimal(100), 1.0, params)
    half = size_order_for_exposure(
        Decimal(10_000), Decimal(100), 1.0, params, side="BUY", target_exposure=0.5
    )
    assert half.quantity == Decimal("25.000")


@pytest.fixture
def policy_bot(
    redis_url: str, stub_server: tuple[Upstreams, StubServer], tmp_path: Path
) -> Iterator[tuple[Any, OtlpReceiver, dict[str, Any]]]:
    """A trading-bot sizing with the champion of a stub rl-training (always half in)."""
    artifact = constant_policy(1)
    answer: dict[str, Any] = {"body": answer_of(artifact)}
    with OtlpReceiver() as otlp, StubServer(champion_stub(answer)) as rl:
        url = stub_server[1].url
        env = base_env(redis_url, otlp.http_endpoint) | {
            "AI_ENGINE_URL": url,
            "RISK_SAFETY_URL": url,
            "EXECUTION_URL": url,
            "PORTFOLIO_INTELLIGENCE_URL": url,
            "RL_TRAINING_URL": rl.url,
            "BOT_SIZING_POLICY": "rl-champion",
            "BOT_DECISION_INTERVAL_MS": "1000",
            "BOT_MIN_CONFIDENCE": "0.6",
        }
        with service("trading-bot", tmp_path, env) as (proc, base):
            from .conftest import Bot

            yield Bot(proc, base, env["EVENTBUS_PREFIX"], redis_url), otlp, artifact


async def test_the_bot_sizes_by_the_champion_and_says_so_on_the_sizing_span(
    policy_bot: tuple[Any, OtlpReceiver, dict[str, Any]], upstreams: Upstreams
) -> None:
    bot, otlp, artifact = policy_bot
    upstreams.signals["ETHUSDT"] = ("BUY", 0.8)
    batch = ticks("ETHUSDT", WINDOW, start="2000")
    await publish(bot, batch)
    (decision,) = wait_decisions(bot, "ETHUSDT")
    assert decision["outcome"] == "ORDERED", decision
    (order,) = upstreams.orders.values()
    expected = size_order_for_exposure(
        Decimal(10_000), batch[-1].ask, 0.8, PARAMS, side="BUY", target_exposure=0.5
    )
    assert Decimal(order["quantity"]) == expected.quantity > 0
    assert expected.quantity < size_order(Decimal(10_000), batch[-1].ask, 0.8, PARAMS).quantity
    spans = otlp.wait_for(lambda s: any(x.name == "sizing" for x in s))
    (sizing,) = [s for s in spans if s.name == "sizing"]
    assert sizing.attributes["sizing.source"] == "policy"
    assert sizing.attributes["policy_version"] == artifact["version"]
    assert sizing.attributes["policy.target_exposure"] == 0.5
