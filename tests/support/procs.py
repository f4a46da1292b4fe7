"""Start real service processes for tests and wait for them with a deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll `predicate()` until it returns a truthy value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what or predicate}")
        time.sleep(interval_s)


def http_ok(port: int, path: str = "/health/live") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return s.recv(32).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Proc:
    """A child Python process whose stdout is collected to a file for later inspection."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


@contextmanager
def running(
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    ready_path: str = "/health/live",
    timeout_s: float = 30.0,
) -> Iterator[Proc]:
    proc = Proc(args, env, log_path)
    try:
        if port is not None:

            def ready() -> bool:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"process exited early:\n{proc.output()[-3000:]}")
                return http_ok(port, ready_path)

            wait_until(ready, timeout_s, what=f"{args} to serve {ready_path}")
        yield proc
    finally:
        proc.stop()
