"""Acceptance: a drift scenario through ai-engine and clm, two real processes.

The test is the market feed: a seeded `MarketSimulator` in a calm regime, published on the
bus tick by tick. clm pins its reference window on the calm ticks, then the feed's regime
changes (`MarketSimulator.set_regime`) to a strong trend. clm must see the input drift,
retrain on the new regime's ticks, run the new model as `challenger` in shadow, and promote
it once it beats the champion; ai-engine must then serve the new version without a restart:
in `/models`, in its prediction spans' `model_version` and in `ai_model_serving`. clm's
retrain span links to its drift alarm's span. Rollback is one call and restores the old one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.trading.events import MarketTick
from backend.trading.marketsim import MS_PER_YEAR, MarketSimulator, Regime, RegimeParams, SymbolSpec
from backend.trading.types import Symbol
from tests.acceptance.harness import base_env, http, poll, service_of, services
from tests.support.otlp import OtlpReceiver
from tests.support.procs import Proc

SYMBOL = "BTCUSDT"
TICK_SIGMA = 0.001
"""Per-tick volatility of both regimes: the regime change is in the drift, not in the noise."""
TREND_PER_TICK = 0.0005
"""The trend's drift per tick: P(up) about 0.69 a tick, which a retrained model can learn."""
TICKS_PER_YEAR = MS_PER_YEAR / 1_000
NEVER_MS = 10**15


def regimes() -> dict[Regime, RegimeParams]:
    vol = TICK_SIGMA * TICKS_PER_YEAR**0.5
    calm = RegimeParams(0.0, vol, 0.0, 0.0, 0.0, 1.0, 1.0, NEVER_MS)
    trend = RegimeParams(TREND_PER_TICK * TICKS_PER_YEAR, vol, 0.0, 0.0, 0.0, 1.0, 1.0, NEVER_MS)
    return {Regime.CALM: calm, Regime.VOLATILE: calm, Regime.TRENDING: trend}


KNOBS = {
    "EVENTBUS_BLOCK_MS": "50",
    "AI_TRAIN_STEPS": "3000",
    "AI_MODEL_REFRESH_S": "0.5",
    "CLM_CHECK_INTERVAL_S": "0.25",
    "CLM_DRIFT_WINDOW": "300",
    "CLM_MIN_DRIFT_ROWS": "150",
    "CLM_TRAIN_TICKS": "400",
    "CLM_MIN_SHADOW_PREDICTIONS": "150",
    "CLM_PROMOTION_MARGIN": "0.005",
}


@dataclass
class Feed:
    """The test's market feed on the services' bus."""

    redis: str
    prefix: str
    sim: MarketSimulator
    sent: int = 0

    def publish(self, n: int) -> None:
        ticks = [
            MarketTick(
                symbol=q.symbol, bid=q.bid, ask=q.ask, last=q.last, volume=q.volume, ts_ms=q.ts_ms
            )
            for q in self.sim.ticks(n)
        ]

        async def send() -> None:
            client = create_redis_client(self.redis)
            try:
                publisher = EventPublisher(
                    client, "test-feed", EventBusSettings(prefix=self.prefix)
                )
                await publisher.publish_many(ticks)
            finally:
                await client.aclose()

        asyncio.run(send())
        self.sent += n
        self.last = ticks[-1]


@dataclass
class Stack:
    otlp: OtlpReceiver
    running: dict[str, tuple[Proc, str]]
    feed: Feed

    def url(self, name: str) -> str:
        return self.running[name][1]

    def status(self) -> dict[str, Any]:
        return dict(http.get(f"{self.url('clm')}/status").json())

    def models(self) -> dict[str, Any]:
        return dict(http.get(f"{self.url('ai-engine')}/models").json())

    def predict(self) -> dict[str, Any]:
        base = float(self.feed.last.bid)
        prices = [str(round(base * (1 + 0.0005 * i), 2)) for i in range(-25, 1)]
        answer = http.post(
            f"{self.url('ai-engine')}/predict", json={"symbol": SYMBOL, "prices": prices}
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def serving_gauge(self) -> dict[str, float]:
        text = http.get(f"{self.url('ai-engine')}/metrics").text
        found = {}
        for line in text.splitlines():
            if line.startswith("ai_model_serving{"):
                version = line.split('version="', 1)[1].split('"', 1)[0]
                found[version] = float(line.rsplit(" ", 1)[1])
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("clm")
    (tmp / "db").mkdir()
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint) | KNOBS
        sim = MarketSimulator(
            [SymbolSpec(Symbol(SYMBOL), Decimal(100))], seed=11, regimes=regimes()
        )
        with services(["ai-engine", "clm"], tmp, env, timeout_s=90) as running:
            yield Stack(otlp, running, Feed(redis_url, env["EVENTBUS_PREFIX"], sim))


def spans_named(stack: Stack, name: str) -> list[Any]:
    return [s for s in stack.otlp.spans if s.name == name]


def test_drift_retrain_shadow_promote_and_rollback(stack: Stack) -> None:
    seed_version = stack.models()["serving"]
    assert seed_version is not None
    assert poll(lambda: stack.status()["champion"] == seed_version, 15, "clm to follow the seed")

    # Calm: clm pins the champion's reference on its first full live window.
    stack.feed.publish(340)
    poll(lambda: stack.status()["reference_rows"] == 300, 20, "clm to pin its reference")
    assert stack.status()["challenger"] is None

    # The regime changes: a strong trend, same noise.
    stack.feed.sim.set_regime(Symbol(SYMBOL), Regime.TRENDING, trend_sign=1.0)
    deadline = time.monotonic() + 120
    promoted = None
    seen_challenger = None
    while time.monotonic() < deadline:
        stack.feed.publish(40)
        time.sleep(0.05)
        status = stack.status()
        seen_challenger = seen_challenger or status["challenger"]
        if status["champion"] != seed_version:
            promoted = status["champion"]
            break
    decisions = [d["decision"] for d in stack.status()["decisions"]]
    assert promoted is not None, f"no promotion after {stack.feed.sent} ticks: {decisions}"
    assert seen_challenger == promoted, "the new model ran as challenger before promotion"
    assert "retrain asked (drift)" in decisions, decisions
    assert decisions.index("retrain asked (drift)") < decisions.index("challenger in shadow")
    assert decisions.index("challenger in shadow") < decisions.index("promoted")

    status = stack.status()
    duel_scores = [s for s in status["scores"] if s["version"] == promoted]
    assert duel_scores and all(s["n"] >= 150 for s in duel_scores if s["role"] == "challenger")

    # ai-engine serves the new version, without a restart.
    def serving(version: str) -> bool:
        models = stack.models()
        rows = {m["version"]: m for m in models["data"]}
        return bool(models["serving"] == version and rows[version]["alias"] == "champion")

    poll(lambda: serving(promoted), 10, "ai-engine to serve the promoted version")
    rows = {m["version"]: m for m in stack.models()["data"]}
    assert rows[seed_version]["stage"] == "retired"
    assert rows[promoted]["metrics"]["training_source"] == "live"
    assert stack.predict()["model_version"] == promoted
    assert stack.serving_gauge().get(promoted) == 1.0
    assert stack.serving_gauge().get(seed_version) == 0.0
    stack.otlp.wait_for(
        lambda spans: any(
            s.name == "signal"
            and service_of(s) == "ai-engine"
            and s.attributes.get("model_version") == promoted
            for s in spans
        )
    )

    # The retrain's trace links to the drift alarm that asked for it.
    stack.otlp.wait_for(lambda spans: any(s.name == "clm.retrain" for s in spans))
    alarms = {(s.trace_id, s.span_id) for s in spans_named(stack, "clm.drift_alarm")}
    retrain = next(
        s
        for s in spans_named(stack, "clm.retrain")
        if s.attributes.get("model_version") == promoted
    )
    assert set(retrain.links) & alarms, (retrain.links, alarms)
    assert retrain.trace_id not in {t for t, _ in alarms}
    assert retrain.attributes.get("retrain.trigger") == "drift"

    # Rollback: one call, and the old version serves again.
    answer = http.post(f"{stack.url('clm')}/rollback")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_version": seed_version, "previous_version": promoted}
    assert serving(seed_version)
    assert stack.predict()["model_version"] == seed_version
    assert stack.serving_gauge().get(seed_version) == 1.0
    assert stack.serving_gauge().get(promoted) == 0.0
    poll(lambda: stack.status()["champion"] == seed_version, 10, "clm to follow the rollback")
