"""A linear trading policy trained by the cross-entropy method, its evaluation against simple
baselines, and its artifact: JSON data with a sha256, never pickle.

The policy scores each action as `obs @ weights + bias` and takes the best. CEM samples a
population of parameter vectors around a mean, runs each for one episode (all on the same
start, so they are compared on the same prices), and moves the mean to the elite. Everything
random comes from one seed, so the same seed and data give the same policy, bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.trading.rlartifact import (
    ARTIFACT_FORMAT,
    InvalidPolicyArtifact,
    LinearPolicy,
    artifact_sha256,
    artifact_to_json,
    canonical_json,
    policy_from_json,
)
from backend.trading.rlenv import EnvConfig, TradingEnv
from backend.trading.types import Quote

MS_PER_YEAR = 365 * 24 * 3600 * 1000

Action = Callable[[np.ndarray], int]


class TrainingCanceled(Exception):
    """The progress callback asked the training to stop."""


@dataclass(frozen=True, slots=True)
class CemConfig:
    """The cross-entropy method's budget and shape."""

    total_steps: int = 10_000
    """Environment steps the whole training may take (population * episode * generations)."""
    population: int = 8
    elite: int = 2
    initial_std: float = 1.0
    min_std: float = 0.05

    def __post_init__(self) -> None:
        if self.population < 2 or not 1 <= self.elite < self.population:
            raise ValueError("need population >= 2 and 1 <= elite < population")
        if self.total_steps < 1 or self.initial_std <= 0 or self.min_std < 0:
            raise ValueError("total_steps and initial_std must be positive, min_std >= 0")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a training stands after one generation."""

    generation: int
    generations: int
    env_steps: int
    total_steps: int
    best_return: float
    mean_return: float

    @property
    def fraction(self) -> float:
        return self.generation / self.generations

    def as_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "generations": self.generations,
            "env_steps": self.env_steps,
            "total_steps": self.total_steps,
            "best_return": self.best_return,
            "mean_return": self.mean_return,
            "fraction": self.fraction,
        }


# Episodes and evaluation ------------------------------------------------------------------------


def run_episode(
    env: TradingEnv, act: Action, options: dict[str, Any] | None = None
) -> tuple[list[float], int]:
    """Run one episode; (equity after each step, starting equity first; steps taken)."""
    obs, info = env.reset(options=options)
    equity = [float(info["equity"])]
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        equity.append(float(info["equity"]))
        steps += 1
        if terminated or truncated:
            return equity, steps


@dataclass(frozen=True, slots=True)
class Performance:
    """How a policy did over one window: total return, annualised Sharpe of the bar returns,
    maximum drawdown (a positive fraction) and turnover (notional traded / starting equity)."""

    total_return: float
    sharpe: float
    max_drawdown: float
    turnover: float

    def as_dict(self) -> dict[str, float]:
        return {
            "return": self.total_return,
            "sharpe": self.sharpe,
            "max_drawdown": self.max_drawdown,
            "turnover": self.turnover,
        }


def evaluate(env: TradingEnv, act: Action, *, bars_per_year: float) -> Performance:
    """Run `act` once over the env's whole quote series, deterministically."""
    obs, info = env.reset(options={"start": 0, "steps": len(env.quotes)})
    equity = [float(info["equity"])]
    traded = 0.0
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        equity.append(float(info["equity"]))
        traded += float(info["traded"])
        if terminated or truncated:
            break
    curve = np.array(equity)
    returns = curve[1:] / curve[:-1] - 1.0
    std = float(returns.std())
    sharpe = float(returns.mean()) / std * math.sqrt(bars_per_year) if std > 0 else 0.0
    peaks = np.maximum.accumulate(curve)
    return Performance(
        total_return=float(curve[-1] / curve[0] - 1.0),
        sharpe=sharpe,
        max_drawdown=float(((peaks - curve) / peaks).max()),
        turnover=traded / float(curve[0]),
    )


def baselines(config: EnvConfig) -> dict[str, Action]:
    """The rules a policy must beat: always fully in, always out, and in after a rising window."""
    top, bottom = len(config.levels) - 1, 0
    window = config.window

    def momentum(obs: np.ndarray) -> int:
        return top if float(obs[:window].sum()) > 0.0 else bottom

    return {
        "buy_and_hold": lambda _obs: top,
        "flat": lambda _obs: bottom,
        "momentum": momentum,
    }


def bars_per_year(quotes: Sequence[Quote]) -> float:
    """How many bars of this series make a year (from its median spacing)."""
    gaps = np.diff([q.ts_ms for q in quotes])
    median = float(np.median(gaps)) if len(gaps) else 0.0
    return MS_PER_YEAR / median if median > 0 else 1.0


# Training -------------------------------------------------------------------------------------


def train_cem(
    env: TradingEnv,
    config: CemConfig,
    *,
    seed: int,
    on_progress: Callable[[Progress], bool] | None = None,
) -> tuple[LinearPolicy, list[Progress]]:
    """Train a linear policy on `env` by CEM; `on_progress` after each generation may return
    False to stop (raises `TrainingCanceled`)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    obs_size = env.config.observation_size
    actions = len(env.config.levels)
    size = obs_size * actions + actions
    per_generation = config.population * env.config.episode_steps
    generations = max(1, math.ceil(config.total_steps / per_generation))
    mean = np.zeros(size)
    std = np.full(size, config.initial_std)
    history: list[Progress] = []
    steps_done = 0
    for generation in range(1, generations + 1):
        candidates = mean + std * rng.standard_normal((config.population, size))
        start = int(env.np_random.integers(env.config.window, _latest_start(env) + 1))
        scores = np.empty(config.population)
        for i, vector in enumerate(candidates):
            policy = LinearPolicy.from_vector(vector, obs_size, actions)
            equity, steps = run_episode(env, policy.act, {"start": start})
            scores[i] = math.log(equity[-1] / equity[0])
            steps_done += steps
        elite = candidates[np.argsort(-scores, kind="stable")[: config.elite]]
        mean = elite.mean(axis=0)
        std = np.maximum(elite.std(axis=0), config.min_std)
        progress = Progress(
            generation,
            generations,
            steps_done,
            config.total_steps,
            float(scores.max()),
            float(scores.mean()),
        )
        history.append(progress)
        if on_progress is not None and not on_progress(progress):
            raise TrainingCanceled(f"canceled after generation {generation} of {generations}")
    return LinearPolicy.from_vector(mean, obs_size, actions), history


def _latest_start(env: TradingEnv) -> int:
    return max(env.config.window, len(env.quotes) - 1 - env.config.episode_steps)


# Artifact --------------------------------------------------------------------------------------


def policy_artifact(
    policy: LinearPolicy, config: EnvConfig, *, training: dict[str, Any]
) -> dict[str, Any]:
    """The policy as data: what it observes, what its actions mean, its parameters and how it
    was trained. Its `version` is derived from the rest, so equal policies have equal versions."""
    body: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "observation": {"window": config.window, "return_scale": 100.0, "exposure": True},
        "levels": list(config.levels),
        "weights": policy.weights.tolist(),
        "bias": policy.bias.tolist(),
        "training": training,
    }
    digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    return {**body, "version": f"rl-{digest[:16]}"}


__all__ = [
    "ARTIFACT_FORMAT",
    "InvalidPolicyArtifact",
    "LinearPolicy",
    "artifact_sha256",
    "artifact_to_json",
    "policy_from_json",
]
