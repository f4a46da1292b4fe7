"""An rl-training job of 10,000 environment steps: how long does it take? (target: under 10 s)

Three figures per run, on the same machine in the same run:
- the baseline: 10,000 steps of the environment alone (the paper venue's fills included) with a
  constant action, no learning, so the ratio shows what training and evaluation add;
- the job's work in-process: simulated prices, CEM training, held-out evaluation against the
  three baselines (`train_and_evaluate`, what the service runs in its worker thread);
- the job end to end: a real rl-training process, `POST /jobs` until `GET /jobs/{id}` says it
  succeeded (its policy registered), timed from the request.

    python -m bench.rl_training --runs 3
    quantum-trader bench rl_training
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backend.infra.observability import get_tracer
from backend.trading.rlenv import EnvConfig, TradingEnv, simulate_quotes
from backend.trading.venue import VenueConfig
from microservices.contracts.rl_training import JobCreate
from microservices.rl_training.data import BAR_MS
from microservices.rl_training.trainer import train_and_evaluate
from tests.support.polling import wait_until
from tests.support.procs import free_port, running

TARGET_S = 10.0
API_TOKEN = secrets.token_urlsafe(24)
STEPS = 10_000


def env_only(request: JobCreate) -> float:
    """Seconds for STEPS environment steps with a constant action (a full rebalance each
    episode start), in episodes of the job's length."""
    quotes = simulate_quotes(
        request.symbol, seed=request.data_seed, bars=request.bars, bar_ms=BAR_MS
    )
    env = TradingEnv(quotes, EnvConfig(window=request.window, episode_steps=request.episode_steps))
    started = time.perf_counter()
    env.reset(seed=0)
    for _ in range(STEPS):
        _, _, _, truncated, _ = env.step(2)
        if truncated:
            env.reset()
    return time.perf_counter() - started


def in_process(request: JobCreate) -> float:
    started = time.perf_counter()
    outcome = train_and_evaluate(
        request, lambda _p: True, get_tracer("bench.rl_training"), VenueConfig()
    )
    assert outcome.env_steps >= STEPS
    return time.perf_counter() - started


def end_to_end(request: JobCreate, runs: int) -> list[float]:
    """Seconds from `POST /jobs` to a succeeded job, `runs` times on one service process."""
    port = free_port()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        env = {
            "PORT": str(port),
            "DATABASE_URL": f"sqlite+aiosqlite:///{Path(tmp) / 'rl-training.db'}",
            "QT_API_TOKEN": API_TOKEN,
            "ENABLE_TRACING": "false",
            "LOG_LEVEL": "WARNING",
        }
        with running(
            ["microservices/rl_training/main.py"],
            env,
            Path(tmp) / "rl-training.log",
            port=port,
            ready_path="/health/ready",
            timeout_s=60,
        ):
            url = f"http://127.0.0.1:{port}"
            times = []
            for n in range(runs):
                body = request.model_copy(update={"seed": request.seed + n}).model_dump()
                started = time.perf_counter()
                job = httpx.post(f"{url}/jobs", json=body, headers=headers).json()

                def done(job_id: int = job["id"]) -> bool:
                    status = httpx.get(f"{url}/jobs/{job_id}").json()["status"]
                    if status in ("failed", "canceled"):
                        raise RuntimeError(f"job {job_id} {status}")
                    return bool(status == "succeeded")

                wait_until(done, 120.0, "the job to succeed", 0.02)
                times.append(time.perf_counter() - started)
            return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    request = JobCreate(total_steps=STEPS)
    print(
        f"job: {STEPS} env steps (population {request.population}, episodes of "
        f"{request.episode_steps}), {request.bars} simulated bars, "
        f"{int(request.holdout_fraction * 100)}% held out",
        flush=True,
    )
    base = [env_only(request) for _ in range(args.runs)]
    local = [in_process(request) for _ in range(args.runs)]
    served = end_to_end(request, args.runs)
    baseline = statistics.median(base)
    for label, times in (
        ("env only (baseline)", base),
        ("job in-process", local),
        ("job via the service", served),
    ):
        median = statistics.median(times)
        print(
            f"{label:<22} median {median:6.2f} s  max {max(times):6.2f} s  "
            f"x{median / baseline:5.1f} the baseline",
            flush=True,
        )
    worst = max(served)
    verdict = "met" if worst < TARGET_S else "MISSED"
    print(f"target: a {STEPS}-step job under {TARGET_S:.0f} s: {verdict} (worst {worst:.2f} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
