"""The RL environment trades on the paper venue itself; training is seeded; artifacts are data."""

from __future__ import annotations

import warnings
from decimal import Decimal

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from backend.trading.instruments import DEFAULT_INSTRUMENTS
from backend.trading.rlenv import EnvConfig, TradingEnv, simulate_quotes, split_window
from backend.trading.rlpolicy import (
    CemConfig,
    InvalidPolicyArtifact,
    TrainingCanceled,
    artifact_sha256,
    artifact_to_json,
    bars_per_year,
    baselines,
    evaluate,
    policy_artifact,
    policy_from_json,
    train_cem,
)
from backend.trading.types import Symbol
from backend.trading.venue import BPS, VenueConfig

QUOTES = simulate_quotes("BTCUSDT", seed=4, bars=800)
SMALL = CemConfig(total_steps=512, population=4, elite=1)
CONFIG = EnvConfig(episode_steps=64)


def test_the_environment_passes_gymnasiums_checker() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning of the checker is a failure here
        check_env(TradingEnv(QUOTES, CONFIG), skip_render_check=True)


@pytest.mark.parametrize("taker_fee_bps", [Decimal(10), Decimal(40)])
def test_a_trade_pays_the_venues_own_fee_and_slippage(taker_fee_bps: Decimal) -> None:
    venue = VenueConfig(taker_fee_bps=taker_fee_bps)
    env = TradingEnv(QUOTES, CONFIG, venue)
    env.reset(options={"start": 10})
    quote = QUOTES[10]
    _, reward, _, _, info = env.step(2)  # flat -> fully in
    instrument = DEFAULT_INSTRUMENTS.get(Symbol("BTCUSDT"))
    assert instrument is not None
    assert info["traded"] > 0
    # The fee is the venue's rate on the notional, rounded up as the venue rounds it.
    expected_fee = instrument.round_fee(Decimal(repr(info["traded"])) * taker_fee_bps / BPS)
    assert Decimal(repr(info["fees"])) == pytest.approx(expected_fee, abs=Decimal("0.01"))
    # A buy fills above the ask by the venue's slippage, never above its cap.
    quantity = Decimal(repr(info["traded"])) / quote.ask
    assert quantity > 0
    worst = float(quote.ask * (1 + venue.max_slippage_bps / BPS))
    assert float(quote.ask) <= info["traded"] / float(quantity) <= worst + 0.01
    assert reward < np.log(float(QUOTES[11].mid / QUOTES[10].mid)) + 1e-12


def test_the_same_seed_trains_the_same_policy_and_another_seed_another() -> None:
    train, _ = split_window(QUOTES, 0.25)

    def artifact(seed: int) -> str:
        policy, history = train_cem(TradingEnv(train, CONFIG), SMALL, seed=seed)
        assert [p.generation for p in history] == [1, 2]
        return artifact_to_json(policy_artifact(policy, CONFIG, training={"seed": seed}))

    assert artifact(3) == artifact(3)
    assert artifact(3) != artifact(4)


def test_training_stops_when_the_progress_callback_says_so() -> None:
    seen: list[int] = []

    def stop_after_first(progress: object) -> bool:
        seen.append(1)
        return False

    with pytest.raises(TrainingCanceled):
        train_cem(TradingEnv(QUOTES, CONFIG), SMALL, seed=1, on_progress=stop_after_first)
    assert seen == [1]


def test_the_baselines_are_evaluated_on_the_whole_held_out_window() -> None:
    _, holdout = split_window(QUOTES, 0.25)
    env = TradingEnv(holdout, CONFIG)
    per_year = bars_per_year(holdout)
    assert per_year == pytest.approx(365 * 24 * 60)
    results = {
        n: evaluate(env, act, bars_per_year=per_year) for n, act in baselines(CONFIG).items()
    }
    assert results["flat"].total_return == results["flat"].turnover == 0.0
    hold = results["buy_and_hold"]
    assert 0.9 < hold.turnover < 1.0  # bought once, with headroom for fees and slippage
    first, last = holdout[CONFIG.window], holdout[-1]
    assert hold.total_return == pytest.approx(float(last.mid / first.mid) - 1, abs=0.01)
    assert 0.0 <= hold.max_drawdown < 1.0


def test_an_artifact_is_loaded_only_if_it_matches_its_sha256() -> None:
    policy, _ = train_cem(TradingEnv(QUOTES, CONFIG), SMALL, seed=2)
    text = artifact_to_json(policy_artifact(policy, CONFIG, training={"seed": 2}))
    loaded, artifact = policy_from_json(text, artifact_sha256(text))
    assert np.array_equal(loaded.weights, policy.weights)
    obs = np.ones(CONFIG.observation_size, dtype=np.float32)
    assert loaded.act(obs) == policy.act(obs)
    assert artifact["version"].startswith("rl-")
    tampered = text.replace('"bias":[', '"bias":[1e3,', 1)
    with pytest.raises(InvalidPolicyArtifact, match="sha256"):
        policy_from_json(tampered, artifact_sha256(text))
    with pytest.raises(InvalidPolicyArtifact, match=r"weights|policy"):
        policy_from_json(tampered, artifact_sha256(tampered))
