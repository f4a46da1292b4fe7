"""Process helpers for the benchmarks: free ports, CPU pinning, waiting for a server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    deadline = time.monotonic() + timeout_s
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
