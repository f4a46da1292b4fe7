"""Start real service processes for tests and wait for them with a deadline."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.polling import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parents[2]


# Ports for test servers come from below the kernel's ephemeral range (32768-60999 by
# default): a port the kernel hands out with bind(0) can be taken, before the test server
# binds it, by any outgoing connection on the machine - that race failed a whole browser run.
_PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no outgoing connection
    will be given; never the same port twice in one test run."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1} after 200 tries")


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
            wait_ready(proc, port, ready_path, timeout_s, name=str(args))
        yield proc
    finally:
        proc.stop()


def wait_ready(
    proc: Proc, port: int, path: str, timeout_s: float, *, name: str, with_output: bool = False
) -> None:
    """Wait until `proc` answers 200 on `path`; fail at once, with its output, if it exits.

    With `with_output`, a timeout shows the end of the process's output too.
    """

    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{proc.output()[-3000:]}")
        return http_ok(port, path)

    try:
        wait_until(ready, timeout_s, f"{name} to serve {path}", 0.05)
    except WaitTimeout as exc:
        if not with_output:
            raise
        raise WaitTimeout(f"{name} not ready in {timeout_s:g}s:\n{proc.output()[-3000:]}") from exc
