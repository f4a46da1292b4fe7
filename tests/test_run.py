"""`make run` (`quantum-trader run`) end to end: every built service up on embedded defaults,
a fill, state and secrets under the var directory, and a clean Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.infra.db import TABLE_OWNERS
from backend.infra.service import BUILT_SERVICES
from quantum_trader.launcher import METRICS_PORT, TRACEVIEW_PORT
from tests.acceptance.harness import poll
from tests.support.procs import ROOT

SCRIPT = Path(sys.executable).parent / "quantum-trader"
SERVICE_PORTS = (*(spec.port for spec in BUILT_SERVICES), TRACEVIEW_PORT, METRICS_PORT)
NAMES = [spec.name for spec in BUILT_SERVICES]
# What a developer's shell may hold that would change what the launcher does.
INHERITED_NOT = (
    "REDIS_URL",
    "DATABASE_URL",
    "OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "QT_API_TOKEN",
    "RISK_APPROVAL_SECRET",
    "RUN_VAR_DIR",
)


def free_offset() -> int:
    """A port offset at which every service port (and the viewer's) is free."""
    for _ in range(50):
        # Every port stays below the kernel's ephemeral range (32768 up by default), where an
        # outgoing connection of any other process could take it between this check and the bind.
        offset = random.randrange(1_000, 32_768 - max(SERVICE_PORTS), 100)
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


def running(pid: int) -> bool:
    """Alive and not a zombie (a child re-parented to an init that does not reap shows as one)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# Every process a test's launcher starts inherits this variable (the services, the viewer and
# the embedded Redis each run in a session of their own, so no process group holds them all):
# `finish` finds the whole tree by it, even after the launcher died and they were re-parented.
TREE_MARKER = "QT_TEST_LAUNCH_ID"
_LAUNCHES: dict[int, tuple[str, Path]] = {}  # launcher pid -> (its marker's value, its cwd)


def start(cwd: Path, **overrides: str) -> subprocess.Popen[str]:
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
    env.update(
        {TREE_MARKER: marker},
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        RUN_PORT_OFFSET=str(free_offset()),
        RUN_READY_TIMEOUT_S="60",
        AI_TRAIN_STEPS="3000",
        AI_HOLD_BAND="0",
        BOT_MIN_CONFIDENCE="0",
        BOT_DECISION_INTERVAL_MS="300",
        FEED_RATE_HZ="10",
    )
    env.update(overrides)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "run"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _LAUNCHES[process.pid] = (marker, cwd.resolve())
    return process


def tree_of(process: subprocess.Popen[str]) -> list[int]:
    """The live processes started by `process` (a launcher from `start`), wherever they are now.

    Found by the marker in their environment or, for Redis (whose process-title rewrite
    overwrites the environment /proc shows), by a working directory inside the launcher's own
    (a directory private to the test).
    """
    value, home = _LAUNCHES[process.pid]
    marker = f"{TREE_MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == process.pid:
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if marker in environ.split(b"\0") or cwd.is_relative_to(home):
            found.append(int(entry.name))
    return found


def finish(process: subprocess.Popen[str]) -> None:
    """Stop a launcher a test left running, and every process it started.

    Ctrl-C first, so the launcher stops its services in order. Whatever is still alive after
    that (the launcher hung and was killed, or died, leaving its children behind) is killed
    too: a failing test must not leave services, Redis or the viewer running.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in tree_of(process):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    poll(lambda: not tree_of(process), 20, "every process the launcher started gone")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def service_environments(output: Output) -> dict[str, dict[str, str]]:
    """Each service process's environment, found by the pid the launcher's guide prints."""
    pids = {}
    for line in output.lines:
        words = line.split()
        if len(words) == 4 and words[0] in NAMES and words[2] == "pid":
            pids[words[0]] = int(words[3])
    assert set(pids) == set(NAMES), "a pid for every service"
    return {name: environ_of(pid) for name, pid in pids.items()}


def read_secrets(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, Path]]:
    process = start(tmp_path, RUN_VAR_DIR="state")
    try:
        yield process, Output(process), tmp_path
    finally:
        finish(process)


def test_make_run_trades_and_ctrl_c_stops_every_process(
    launcher: tuple[subprocess.Popen[str], Output, Path],
) -> None:
    process, output, cwd = launcher
    output.wait_for(r"Quantum Trader is running", 75)
    pids = [int(m) for m in re.findall(r" pid (\d+)", "\n".join(output.lines))]
    assert len(pids) == len(NAMES) + 3, (
        "every built service, the trace viewer, the Redis and the market-data Redis"
    )
    assert re.search(
        r"market data:\s+redis://127\.0\.0\.1:\d+/0 \(embedded", "\n".join(output.lines)
    )
    assert all(alive(pid) for pid in pids)
    fill = output.wait_for(r"^\s+fill\s+(BUY|SELL) .* order (\S+)$", 45)
    assert (cwd / "state" / "log" / "trading-bot.log").stat().st_size > 0

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
    killed = [line for line in output.lines if "killing it" in line]
    assert killed == [], "every process stops on SIGTERM"


def test_a_launcher_killed_outright_leaves_no_process_behind_once_the_fixture_cleans_up(
    tmp_path: Path,
) -> None:
    process = start(tmp_path, RUN_VAR_DIR="state")  # as the `launcher` fixture starts it
    try:
        everyone = len(NAMES) + 3  # the services, the trace viewer and both embedded Redis
        children = poll(
            lambda: (found := tree_of(process)) and len(found) >= everyone and found,
            60,
            "every child of the launcher started",
        )
        process.kill()  # SIGKILL: the launcher cannot stop anything itself
        process.wait()
        assert any(running(pid) for pid in children), "the children outlive a killed launcher"
    finally:
        finish(process)
    poll(
        lambda: not [pid for pid in children if running(pid)],
        20,
        "no child of the launcher left running",
    )


def test_run_keeps_its_state_and_secrets_under_the_var_dir_and_reuses_them_on_the_next_run(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    secrets_file = state / "secrets.env"
    first = start(tmp_path, RUN_VAR_DIR="state", RUN_TRACEVIEW="false")
    try:
        output = Output(first)
        output.wait_for(r"Quantum Trader is running", 75)
        token = output.wait_for(r"API token: (\S+)$", 1).group(1)
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        secrets = read_secrets(secrets_file)
        assert secrets["QT_API_TOKEN"] == token
        given = {k: secrets[k] for k in ("QT_API_TOKEN", "RISK_APPROVAL_SECRET")}
        for name, env in service_environments(output).items():
            assert given.items() <= env.items(), name
        # clm's tables are reserved: it keeps its scores and drift state in memory (docs/CLM.md).
        with_tables = {name for name in TABLE_OWNERS if name in NAMES} - {"clm"}
        assert {p.stem for p in state.glob("*.db")} == with_tables
        assert (state / "redis").is_dir() and (state / "log" / "execution.log").is_file()
        assert not (tmp_path / "var").exists(), "nothing is written to ./var"
    finally:
        finish(first)
    assert first.returncode == 0

    second = start(tmp_path, RUN_VAR_DIR="state", RUN_TRACEVIEW="false")
    try:
        output = Output(second)
        output.wait_for(r"Quantum Trader is running", 75)
        assert read_secrets(secrets_file) == secrets, "the same secrets, not new ones"
        output.wait_for(rf"API token: in {re.escape(str(Path('state') / 'secrets.env'))}", 1)
        assert not any(token in line for line in output.lines), "the token is shown once only"
        for name, env in service_environments(output).items():
            assert given.items() <= env.items(), name
    finally:
        finish(second)
    assert second.returncode == 0


def test_a_service_that_never_gets_ready_is_named_with_its_log(tmp_path: Path) -> None:
    # Nothing listens on port 9: every service waits for its database, none becomes ready.
    # The timeout leaves the first service time to import and answer its readiness probe
    # (about 10 s of a slow machine's CPU for ai-engine): the answer names the dependency.
    process = start(
        tmp_path,
        RUN_READY_TIMEOUT_S="45",
        RUN_TRACEVIEW="false",
        ENABLE_TRACING="false",
        DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none",
    )
    try:
        output = Output(process)
        assert process.wait(100) == 1
        output.wait_for(r"^Stopped\.", 5)
        text = "\n".join(output.lines)
        assert re.search(r"Could not start: [a-z-]+ was not ready after 45s", text), text
        assert '"database"' in text, "the failing dependency is named"
        assert "the end of var/log/" in text
        pids = [int(m) for m in re.findall(r"embedded, pid (\d+)", text)]
        assert not any(alive(pid) for pid in pids)
    finally:
        finish(process)


def test_killed_processes_are_started_again_and_a_dead_viewer_never_stops_trading(
    launcher: tuple[subprocess.Popen[str], Output, Path],
) -> None:
    process, output, _cwd = launcher
    output.wait_for(r"Quantum Trader is running", 75)
    text = "\n".join(output.lines)
    pid_of = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s+(\S+)\s+http://\S+\s+pid (\d+)", text, re.M)
    }
    redis_pid = int(re.search(r"embedded, pid (\d+)", text).group(1))  # type: ignore[union-attr]
    metrics_url = output.wait_for(r"supervisor:\s+(http://\S+/metrics)", 1).group(1)
    for name in ("traceview", "execution"):
        os.kill(pid_of[name], signal.SIGKILL)
    os.kill(redis_pid, signal.SIGKILL)

    output.wait_for(r"restart redis: started again", 20)
    output.wait_for(r"restart execution: ready again", 30)
    output.wait_for(r"restart traceview: ready again", 30)
    assert process.poll() is None, "the run goes on"
    samples = httpx.get(metrics_url).text
    for name in ("traceview", "execution", "redis"):
        assert f'launcher_restarts_total{{process="{name}"}} 1.0' in samples
    # Trading goes on: a fill booked after the restarts is printed.
    seen = len(output.lines)
    poll(
        lambda: any(re.match(r"^\s+fill\s", line) for line in output.lines[seen:]),
        45,
        "a fill after the restarts",
    )
    # The restarted processes stop on Ctrl-C like the others.
    process.send_signal(signal.SIGINT)
    assert process.wait(40) == 0
    killed = [line for line in output.lines if "killing it" in line]
    assert killed == [], killed


def test_a_hung_embedded_redis_is_killed_and_started_again(tmp_path: Path) -> None:
    """A stopped redis-server accepts connections and never answers: only PING tells."""
    process = start(tmp_path, RUN_VAR_DIR="state", RUN_HANG_TIMEOUT_S="5")
    try:
        output = Output(process)
        output.wait_for(r"Quantum Trader is running", 75)
        text = "\n".join(output.lines)
        pid = int(re.search(r"embedded, pid (\d+)", text).group(1))  # type: ignore[union-attr]
        metrics_url = output.wait_for(r"supervisor:\s+(http://\S+/metrics)", 1).group(1)
        os.kill(pid, signal.SIGSTOP)

        output.wait_for(rf"hung\s+the embedded Redis \(pid {pid}\) has not answered PING", 40)
        output.wait_for(r"restart redis: started again", 30)
        assert not running(pid), "the hung server was killed"
        samples = httpx.get(metrics_url).text
        assert 'launcher_hangs_total{process="redis"} 1.0' in samples
        assert 'launcher_restarts_total{process="redis"} 1.0' in samples
        # Trading goes on against the restarted server: a fill booked afterwards is printed.
        seen = len(output.lines)
        poll(
            lambda: any(re.match(r"^\s+fill\s", line) for line in output.lines[seen:]),
            60,
            "a fill after the restart",
        )
        assert process.poll() is None, "the run goes on"
    finally:
        finish(process)


def test_a_hung_service_is_killed_and_started_again(tmp_path: Path) -> None:
    """SIGSTOP leaves the process alive but silent: only the liveness probe can tell."""
    process = start(tmp_path, RUN_VAR_DIR="state", RUN_HANG_TIMEOUT_S="5")
    try:
        output = Output(process)
        output.wait_for(r"Quantum Trader is running", 75)
        text = "\n".join(output.lines)
        pid = int(re.search(r"^\s+position-monitor\s+http://\S+\s+pid (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        metrics_url = output.wait_for(r"supervisor:\s+(http://\S+/metrics)", 1).group(1)
        os.kill(pid, signal.SIGSTOP)

        output.wait_for(rf"hung\s+position-monitor \(pid {pid}\) has not answered /health/live", 40)
        output.wait_for(r"restart position-monitor: ready again", 60)
        assert not running(pid), "the hung process was killed"
        samples = httpx.get(metrics_url).text
        assert 'launcher_hangs_total{process="position-monitor"} 1.0' in samples
        assert 'launcher_restarts_total{process="position-monitor"} 1.0' in samples
        assert process.poll() is None, "the run goes on"
    finally:
        finish(process)
