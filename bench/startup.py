"""`quantum-trader run` from launch to every built service ready: how long? (target: under 60 s)

Per run: a fresh var directory (so migrations and secrets are first-run work), the launcher
started as `make run` starts it, and every service's `/health/ready` polled from launch; the
figure is when the last one answered 200. In the same run, as baselines:
- a bare interpreter starting (`python -c pass`);
- each service's module imported alone (`python -c "import microservices.<svc>.service"`),
  which is what every service pays before it can listen; the slowest show where start-up goes.

    python -m bench.startup --runs 2
    RUN_PORT_OFFSET=400 quantum-trader bench startup
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from backend.infra.service import BUILT_SERVICES

TARGET_S = 60.0
TIMEOUT_S = 180.0
ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def launch(offset: int) -> tuple[float, dict[str, float]]:
    """Seconds until every built service is ready, and each one's time."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as var:
        env = {
            **os.environ,
            "RUN_VAR_DIR": var,
            "RUN_PORT_OFFSET": str(offset),
            "PYTHONPATH": str(ROOT),
        }
        for name in ("REDIS_URL", "DATABASE_URL", "OTLP_ENDPOINT"):
            env.pop(name, None)  # the embedded defaults, as `make run` on a new machine
        ports = {spec.name: spec.port + offset for spec in BUILT_SERVICES}
        ready: dict[str, float] = {}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantum_trader", "run"],
            cwd=ROOT,
            env=env,
            stdout=open(Path(var) / "launcher.out", "wb"),  # noqa: SIM115 - closed with the dir
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(timeout=1.0) as client:
                while len(ready) < len(ports):
                    elapsed = time.perf_counter() - started
                    if proc.poll() is not None:
                        out = (Path(var) / "launcher.out").read_text(errors="replace")
                        raise RuntimeError(
                            f"the launcher exited ({proc.returncode}):\n{out[-2000:]}"
                        )
                    if elapsed > TIMEOUT_S:
                        missing = sorted(set(ports) - set(ready))
                        raise RuntimeError(f"not ready after {TIMEOUT_S:g} s: {missing}")
                    for name, port in ports.items():
                        if name in ready:
                            continue
                        try:
                            answer = client.get(f"http://127.0.0.1:{port}/health/ready")
                        except httpx.HTTPError:
                            continue
                        if answer.status_code == 200:
                            ready[name] = time.perf_counter() - started
                    time.sleep(0.1)
            return max(ready.values()), ready
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--offset",
        type=int,
        default=int(os.environ.get("RUN_PORT_OFFSET", "0")),
        help="Port offset of the launched system (default RUN_PORT_OFFSET, else 0).",
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"{len(BUILT_SERVICES)} built services, port offset {args.offset}, load {load:.1f}")
    bare = statistics.median(timed(["-c", "pass"]) for _ in range(3))
    print(f"bare interpreter (baseline)   {bare:6.2f} s")
    imports = {spec.name: timed(["-c", f"import {spec.module}"]) for spec in BUILT_SERVICES}
    for name, seconds in sorted(imports.items(), key=lambda kv: -kv[1]):
        print(f"  import {name:<24} {seconds:6.2f} s  x{seconds / bare:5.1f} the baseline")
    totals = []
    for n in range(args.runs):
        total, ready = launch(args.offset)
        totals.append(total)
        order = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ready.items(), key=lambda kv: kv[1]))
        print(
            f"run {n + 1}: all ready in {total:6.2f} s  x{total / bare:5.1f} the baseline",
            f"({order})",
        )
    worst = max(totals)
    verdict = "met" if worst < TARGET_S else "MISSED"
    print(
        f"target: every built service ready under {TARGET_S:.0f} s: {verdict} "
        f"(median {statistics.median(totals):.2f} s, worst {worst:.2f} s)"
    )
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
