"""`make run` end to end: six services up on embedded defaults, a fill, and a clean Ctrl-C."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.harness import API_TOKEN, poll
from tests.support.procs import ROOT

SERVICE_PORTS = (8001, 8002, 8003, 8004, 8006, 8012, 16686)


def free_offset() -> int:
    """A port offset at which all six service ports are free."""
    for _ in range(50):
        offset = random.randrange(20_000, 45_000, 100)
        try:
            for port in SERVICE_PORTS:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return offset
    raise AssertionError("no free block of ports")


class Output:
    """The launcher's stdout, line by line, collected by a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    text = "\n".join(self.lines[-40:])
                    raise AssertionError(f"no line matching {pattern!r}:\n{text}")
                self._cond.wait(remaining)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(cwd: Path, **overrides: str) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        RUN_PORT_OFFSET=str(free_offset()),
        RUN_READY_TIMEOUT_S="60",
        AI_TRAIN_STEPS="3000",
        AI_HOLD_BAND="0",
        BOT_MIN_CONFIDENCE="0",
        BOT_DECISION_INTERVAL_MS="300",
        FEED_RATE_HZ="10",
        # The launcher hands its environment down: every service shares this token.
        QT_API_TOKEN=API_TOKEN,
    )
    env.update(overrides)
    return subprocess.Popen(
        [sys.executable, "-m", "backend.run"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, Path]]:
    process = start(tmp_path)
    try:
        yield process, Output(process), tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_make_run_trades_and_ctrl_c_stops_every_process(
    launcher: tuple[subprocess.Popen[str], Output, Path],
) -> None:
    process, output, cwd = launcher
    output.wait_for(r"Quantum Trader is running", 75)
    pids = [int(m) for m in re.findall(r" pid (\d+)", "\n".join(output.lines))]
    assert len(pids) == 8, "six services, the trace viewer and the embedded Redis"
    assert all(alive(pid) for pid in pids)
    fill = output.wait_for(r"^\s+fill\s+(BUY|SELL) .* order (\S+)$", 45)
    assert (cwd / "var" / "log" / "trading-bot.log").stat().st_size > 0

    # The embedded viewer holds the trade's trace, found by its client order id.
    viewer = output.wait_for(r"traces:\s+(http://\S+)", 1).group(1)
    expected = {"eventbus-bridge", "trading-bot", "ai-engine", "risk-safety", "execution"}

    def whole_trace() -> list[dict[str, object]] | None:
        # Each service exports on its own schedule: wait until all of them have sent theirs.
        found = httpx.get(f"{viewer}/api/traces", params={"q": fill.group(2)}).json()["data"]
        return [t for t in found if expected <= set(t["services"])] or None

    poll(whole_trace, 20, "the trade's trace, from every service, in the viewer")

    process.send_signal(signal.SIGINT)
    assert process.wait(40) == 0
    output.wait_for(r"^Stopped\.", 5)
    assert [pid for pid in pids if alive(pid)] == [], "no process outlives the launcher"
    assert not any("killing it" in line for line in output.lines), "all stopped on SIGTERM"


def test_a_service_that_never_gets_ready_is_named_with_its_log(tmp_path: Path) -> None:
    # Nothing listens on port 9: every service waits for its database, none becomes ready.
    process = start(
        tmp_path,
        RUN_READY_TIMEOUT_S="15",
        RUN_TRACEVIEW="false",
        ENABLE_TRACING="false",
        DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none",
    )
    try:
        output = Output(process)
        assert process.wait(40) == 1
        output.wait_for(r"^Stopped\.", 5)
        text = "\n".join(output.lines)
        assert re.search(r"Could not start: [a-z-]+ was not ready after 15s", text), text
        assert '"database"' in text, "the failing dependency is named"
        assert "the end of var/log/" in text
        pids = [int(m) for m in re.findall(r"embedded, pid (\d+)", text)]
        assert not any(alive(pid) for pid in pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
