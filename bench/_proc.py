"""Process helpers for the benchmarks: CPU pinning, spawning and waiting for a server.

Free ports and polling with a deadline are the test suite's (`tests.support`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tests.support.polling import wait_until
from tests.support.procs import http_ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpus() -> tuple[set[int], set[int]]:
    """(server cores, load cores): the server on one core, everything else on the others."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, set(available[1:])


def spawn(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    cores: set[int] | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=full_env,
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )
    if cores:
        os.sched_setaffinity(proc.pid, cores)
    return proc


def wait_http(port: int, path: str = "/ping", timeout_s: float = 20.0) -> None:
    wait_until(lambda: http_ok(port, path), timeout_s, f"the server on port {port}", 0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
