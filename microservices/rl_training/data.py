"""A job's data and shapes: its simulated prices split into training and held-out windows, and
the environment and CEM configurations its request describes."""

from __future__ import annotations

from backend.trading.rlenv import EnvConfig, simulate_quotes, split_window
from backend.trading.rlpolicy import CemConfig
from backend.trading.types import Quote
from microservices.contracts.rl_training import JobCreate

BAR_MS = 60_000


def job_windows(request: JobCreate) -> tuple[list[Quote], list[Quote]]:
    """(training quotes, held-out quotes) of a job: its simulated prices, split."""
    quotes = simulate_quotes(
        request.symbol, seed=request.data_seed, bars=request.bars, bar_ms=BAR_MS
    )
    return split_window(quotes, request.holdout_fraction)


def job_configs(request: JobCreate) -> tuple[EnvConfig, CemConfig]:
    """The environment and the CEM budget of a job."""
    env_config = EnvConfig(window=request.window, episode_steps=request.episode_steps)
    cem = CemConfig(
        total_steps=request.total_steps, population=request.population, elite=request.elite
    )
    return env_config, cem
