"""clm's drift check over a day of ticks (86,400 one-second ticks): how long? (target: under 1 s)

A day of one symbol's simulated ticks (`MarketSimulator`, seeded). Figures per run, all in the
same run on the same machine:
- the baseline: the day's feature rows alone (`feature_matrix` over every 21-price window),
  the work any model needs before drift can even be asked about;
- the drift check: those features, then PSI and the KS test of all nine features of the day
  against a training reference from 20,000 simulated ticks (`drift.input_drift`, what clm
  runs; rows with no price move are left out, as in training), plus ADWIN
  over the day's 86,400-long correctness stream. This is the figure against the target;
- for information, clm's per-tick path over the same day (`LearningManager.observe`: one
  feature row and a champion prediction per tick), which the live service spreads over 24 h;
  timed on a tenth of the day and reported per tick.

    python -m bench.clm_drift --runs 3
    quantum-trader bench clm_drift
"""

from __future__ import annotations

import argparse
import statistics
import time
from decimal import Decimal
from typing import Any, cast

import numpy as np

from backend.infra.observability import get_logger, get_tracer
from backend.trading.features import FEATURE_NAMES, WINDOW, feature_matrix, make_training_set
from backend.trading.marketsim import MarketSimulator, SymbolSpec
from backend.trading.model import train_initial_model
from backend.trading.types import Symbol
from microservices.clm.drift import ConceptDetector, input_drift
from microservices.clm.manager import LearningManager, Tracked
from microservices.clm.settings import ClmSettings

TARGET_S = 1.0
DAY_TICKS = 86_400
REFERENCE_ROWS = 20_000
PER_TICK_SAMPLE = 8_640
"""The per-tick path is timed on a tenth of the day and reported per tick."""


def day_of_prices(seed: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    sim = MarketSimulator([SymbolSpec(Symbol("SIM"), Decimal(100))], seed=seed)
    return np.fromiter(
        (float((q.bid + q.ask) / 2) for q in sim.ticks(DAY_TICKS)), np.float64, DAY_TICKS
    )


def features_of(prices: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, Any]:
    windows = np.lib.stride_tricks.sliding_window_view(prices, WINDOW)
    return feature_matrix(np.ascontiguousarray(windows))


def drift_check(
    prices: np.ndarray[Any, np.dtype[np.float64]],
    reference: np.ndarray[Any, Any],
    artifact: dict[str, Any],
) -> tuple[float, int, int]:
    """Seconds for the day's features, input drift and ADWIN; the features drifted, alarms."""
    started = time.perf_counter()
    rows = features_of(prices)
    report = input_drift(reference, rows, FEATURE_NAMES, psi_threshold=0.25, ks_alpha=0.001)
    z = (rows - np.asarray(artifact["means"])) / np.asarray(artifact["scales"])
    p_up = 1.0 / (1.0 + np.exp(-(z @ np.asarray(artifact["coefficients"]) + artifact["intercept"])))
    up = np.diff(prices)[WINDOW - 1 :] > 0
    wrong = ((p_up[: up.size] >= 0.5) != up).astype(np.float64)
    adwin, alarms = ConceptDetector(0.002), 0
    for value in wrong.tolist():
        alarms += adwin.update(value)
    return time.perf_counter() - started, len(report.drifted), alarms


def per_tick(prices: np.ndarray[Any, np.dtype[np.float64]], artifact: dict[str, Any]) -> float:
    manager = LearningManager(
        ClmSettings(), cast(Any, None), get_logger("bench.clm"), get_tracer("bench.clm")
    )
    manager.champion = Tracked.of(artifact, time.time())
    started = time.perf_counter()
    sample = prices[:PER_TICK_SAMPLE].tolist()
    for mid in sample:
        manager.observe("SIM", mid)
    return (time.perf_counter() - started) / len(sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-per-tick", action="store_true")
    args = parser.parse_args(argv)

    artifact = train_initial_model(7, steps=REFERENCE_ROWS + WINDOW + 1)
    x, _ = make_training_set(
        np.fromiter(
            (
                float((q.bid + q.ask) / 2)
                for q in MarketSimulator([SymbolSpec(Symbol("SIM"), Decimal(100))], seed=7).ticks(
                    REFERENCE_ROWS + WINDOW + 1
                )
            ),
            np.float64,
        ),
        1,
    )
    prices = day_of_prices(seed=12)
    baseline, checks, ticks = [], [], []
    drifted = alarms = 0
    for _ in range(args.runs):
        started = time.perf_counter()
        features_of(prices)
        baseline.append(time.perf_counter() - started)
        seconds, drifted, alarms = drift_check(prices, x, artifact)
        checks.append(seconds)
        if not args.skip_per_tick:
            ticks.append(per_tick(prices, artifact))
    base, check = statistics.median(baseline), statistics.median(checks)
    print(f"day of ticks: {DAY_TICKS:,}; reference rows: {x.shape[0]:,}; runs: {args.runs}")
    print(f"baseline (features alone):        {base * 1000:8.1f} ms")
    print(
        f"drift check (features+PSI+KS+ADWIN): {check * 1000:8.1f} ms  "
        f"({check / base:.1f}x baseline); target < {TARGET_S * 1000:.0f} ms: "
        f"{'met' if check < TARGET_S else 'MISSED'}"
    )
    print(f"  features drifted: {drifted} of {len(FEATURE_NAMES)}; ADWIN alarms: {alarms}")
    if ticks:
        tick = statistics.median(ticks)
        print(
            f"per-tick path (information, {PER_TICK_SAMPLE:,} ticks): {tick * 1e6:.1f} us/tick, "
            f"{tick * DAY_TICKS:.1f} s of a day's 86,400 s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
