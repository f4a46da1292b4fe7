"""The halt window: how long after risk-safety halts can an exposure-increasing order still fill?

Each run starts a real execution process (its own SQLite file and bus prefix, a real Redis),
serves it a signed ACTIVE state from a real HTTP risk-safety stub, submits marketable and
resting buys and reduce-only exits from several threads while ticks keep crossing the resting
buys, then halts: by push and poll (risk-safety's way) or by the poll alone (the push lost).
It prints, per run and over all runs, the time from the halt to its adoption by execution (the
bound of the window) and to the last exposure-increasing fill, and fails if any
exposure-increasing fill came after the adoption.

    python -m bench.halt_window --runs 10             # both modes, EXECUTION_RISK_POLL_MS=250
    python -m bench.halt_window --mode poll --poll-ms 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx

from tests.support.halting import HaltResult, run_halt
from tests.support.polling import wait_until
from tests.support.procs import free_port, running
from tests.support.redis import redis_server
from tests.support.riskstub import RiskStub


@contextmanager
def execution(tmp: Path, redis: str, prefix: str, risk: RiskStub, poll_ms: int) -> Iterator[str]:
    """A real execution process, ready; yields its URL."""
    port = free_port()
    env = {
        "PORT": str(port),
        "REDIS_URL": redis,
        "EVENTBUS_PREFIX": prefix,
        "EVENTBUS_BLOCK_MS": "50",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'execution.db'}",
        "RISK_SAFETY_URL": risk.url,
        "EXECUTION_RISK_POLL_MS": str(poll_ms),
        "ENABLE_TRACING": "false",
        "LOG_LEVEL": "WARNING",
    }
    with running(
        ["microservices/execution/main.py"],
        env,
        tmp / "execution.log",
        port=port,
        ready_path="/health/ready",
        timeout_s=60,
    ):
        yield f"http://127.0.0.1:{port}"


def one_run(redis: str, mode: Literal["push", "poll"], poll_ms: int, threads: int) -> HaltResult:
    with tempfile.TemporaryDirectory(prefix="halt-window-") as tmp:
        prefix = f"qt-bench-{uuid.uuid4().hex[:10]}"
        risk = RiskStub()
        try:
            with (
                execution(Path(tmp), redis, prefix, risk, poll_ms) as url,
                httpx.Client(base_url=url, timeout=10) as client,
            ):
                wait_until(
                    lambda: client.get("/risk/state").json()["accepts"] == "ALL",
                    timeout_s=20,
                    what="execution to adopt the ACTIVE state",
                )
                return run_halt(
                    client, risk, redis_url=redis, prefix=prefix, mode=mode, threads=threads
                )
        finally:
            risk.close()


def summary(values: list[int]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"min {ordered[0]:>5} ms  median {statistics.median(ordered):>7.1f} ms  "
        f"p95 {p95:>5} ms  max {ordered[-1]:>5} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mode", choices=("push", "poll", "both"), default="both")
    parser.add_argument("--poll-ms", type=int, default=250)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    modes: tuple[Literal["push", "poll"], ...] = (
        ("push", "poll") if args.mode == "both" else (args.mode,)
    )
    late_total = 0
    with (
        tempfile.TemporaryDirectory(prefix="halt-window-redis-") as redis_tmp,
        redis_server(Path(redis_tmp)) as redis,
    ):
        for mode in modes:
            late_total += measure(redis, mode, args.runs, args.poll_ms, args.threads)
    print(f"exposure-increasing fills after the adoption, all runs: {late_total}")
    return 1 if late_total else 0


def measure(
    redis: str, mode: Literal["push", "poll"], runs: int, poll_ms: int, threads: int
) -> int:
    """Print `runs` halts by `mode` and their summary; the number of late fills."""
    lags: list[int] = []
    windows: list[int] = []
    late = 0
    print(f"== halt by {mode}, EXECUTION_RISK_POLL_MS={poll_ms} ==", flush=True)
    for n in range(runs):
        result = one_run(redis, mode, poll_ms, threads)
        lags.append(result.adoption_lag_ms)
        windows.append(result.window_ms)
        late += len(result.late_increasing_fills)
        print(
            f"run {n + 1:>2}: adopted after {result.adoption_lag_ms:>4} ms, last "
            f"exposure-increasing fill {result.window_ms:>4} ms after the halt, "
            f"{len(result.late_increasing_fills)} after the adoption; "
            f"{result.submitted} orders {result.statuses}",
            flush=True,
        )
    print(f"halt -> adoption:               {summary(lags)}")
    print(f"halt -> last increasing fill:   {summary(windows)}")
    return late


if __name__ == "__main__":
    sys.exit(main())
