"""The launcher supervises what it starts: real processes killed, started again, given up on."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from quantum_trader.launcher import (
    METRICS,
    Child,
    Launcher,
    LaunchOptions,
    RestartPolicy,
    Restarts,
)
from tests.support.procs import free_port

QUICK = RestartPolicy(backoff_s=0.05, backoff_max_s=0.2, max_crashes=2, window_s=30.0)

# A stand-in service: answers 200 to every GET (its /health/ready) until killed.
SERVE = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def metric(name: str, process: str) -> float:
    return METRICS.get_sample_value(name, {"process": process}) or 0.0


def poll(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stand_in(tmp_path: Path, name: str, *, crash: bool = False, essential: bool = True) -> Child:
    port = free_port()
    args = ["-c", "import sys; sys.exit(3)"] if crash else ["-c", SERVE, str(port)]
    return Child(
        name, args, port, tmp_path / "log" / f"{name}.log", ready_path="/", essential=essential
    )


@pytest.fixture
def make_launcher(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    made: list[Launcher] = []

    def make(*children: Child, policy: RestartPolicy = QUICK) -> Launcher:
        launcher = Launcher(
            LaunchOptions(var_dir=tmp_path, traceview=False, metrics_port=None, restart=policy),
            environ={},
        )
        launcher.children = list(children)
        for child in children:
            child.restarts = Restarts(policy)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:  # whatever the test did, nothing it started stays behind
        launcher.stopping.set()
        launcher.stop()


def watch_in_thread(launcher: Launcher) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(launcher.watch()), daemon=True)
    thread.start()
    return thread, codes


def test_a_killed_service_is_started_again_said_on_the_console_and_counted(
    make_launcher: Callable[..., Launcher], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child = stand_in(tmp_path, "stand-in-service")
    launcher = make_launcher(child)
    launcher.start_services()
    launcher.wait_ready()
    before = metric("launcher_restarts_total", child.name)
    thread, codes = watch_in_thread(launcher)
    assert child.process is not None
    first = child.process.pid
    os.kill(first, signal.SIGKILL)
    poll(lambda: child.process is not None and child.process.pid != first, 10, "a new process")
    poll(lambda: not child.awaiting_ready, 10, "the restarted child to be ready")
    assert child.alive()
    assert metric("launcher_restarts_total", child.name) == before + 1
    assert metric("launcher_process_up", child.name) == 1
    launcher.stopping.set()
    thread.join(5)
    assert codes == [0]
    out = capsys.readouterr().out
    assert f"crash   {child.name} exited (code -9); restarting it in 0.05 s" in out
    assert f"restart {child.name}: ready again" in out


def test_a_crash_loop_of_a_service_gives_up_and_says_so(
    make_launcher: Callable[..., Launcher], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy = stand_in(tmp_path, "healthy")
    looping = stand_in(tmp_path, "looping", crash=True)
    launcher = make_launcher(healthy, looping)
    launcher.start_services()
    thread, codes = watch_in_thread(launcher)
    thread.join(15)
    assert codes == [1]
    out = capsys.readouterr().out
    assert "looping is in a crash loop (3 crashes within 30 s; exit code 3)" in out
    assert "giving up and stopping everything" in out
    assert metric("launcher_gave_up", "looping") == 1
    assert metric("launcher_restarts_total", "looping") == 2


def test_a_viewer_in_a_crash_loop_is_given_up_on_and_trading_goes_on(
    make_launcher: Callable[..., Launcher], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = stand_in(tmp_path, "trading")
    viewer = stand_in(tmp_path, "viewer", crash=True, essential=False)
    launcher = make_launcher(service, viewer)
    launcher.start_services()
    thread, codes = watch_in_thread(launcher)
    poll(lambda: metric("launcher_gave_up", "viewer") == 1, 15, "the launcher to give up")
    time.sleep(0.5)  # a few more rounds: the run goes on
    assert thread.is_alive() and codes == []
    assert service.alive()
    launcher.stopping.set()
    thread.join(5)
    assert codes == [0]
    assert "viewer keeps crashing" in capsys.readouterr().out


def test_the_embedded_redis_killed_is_started_again_with_its_data(
    make_launcher: Callable[..., Launcher], capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = make_launcher()
    launcher.start_redis()
    assert launcher.redis is not None
    client = redis.Redis.from_url(launcher.redis_url, socket_connect_timeout=1)
    try:
        client.set("survives", "yes")
        port, first = launcher.redis.port, launcher.redis.pid
        assert first is not None
        before = metric("launcher_restarts_total", "redis")
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        thread, codes = watch_in_thread(launcher)
        poll(lambda: metric("launcher_restarts_total", "redis") == before + 1, 10, "a restart")
        back_s = time.monotonic() - killed
        print(f"redis answered again {back_s:.2f} s after the SIGKILL", file=sys.stderr)
        assert launcher.redis.port == port and launcher.redis.pid != first
        assert client.get("survives") == b"yes"  # the append-only file was replayed
        launcher.stopping.set()
        thread.join(5)
        assert codes == [0]
    finally:
        client.close()
    assert "the embedded Redis died; restarting it in 0.05 s" in capsys.readouterr().out


def test_the_market_data_redis_is_started_without_a_file_handed_to_the_services_and_restarted(
    make_launcher: Callable[..., Launcher], capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = make_launcher()
    launcher.start_redis()
    market = next(u.server for u in launcher.redises if u.label == "redis-market")
    assert launcher.market_redis_url == market.url != launcher.redis_url
    service = stand_in(launcher.var_dir, "execution")
    assert launcher.child_env(service)["MARKET_REDIS_URL"] == market.url
    client = redis.Redis.from_url(launcher.market_redis_url, socket_connect_timeout=1)
    try:
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("gone", "after a restart")
        port, first = market.port, market.pid
        assert first is not None
        before = metric("launcher_restarts_total", "redis-market")
        os.kill(first, signal.SIGKILL)
        thread, codes = watch_in_thread(launcher)
        poll(lambda: metric("launcher_restarts_total", "redis-market") == before + 1, 10, "restart")
        # Same port, so the services' URL still holds; nothing kept, as intended for ticks.
        assert market.port == port and market.pid != first
        assert client.get("gone") is None
        launcher.stopping.set()
        thread.join(5)
        assert codes == [0]
    finally:
        client.close()
    out = capsys.readouterr().out
    assert "the market-data Redis died; restarting it in 0.05 s on port" in out
    assert "with its data" not in out.split("market-data Redis died", 1)[1].splitlines()[0]
    launcher.stop()
    assert market.pid is None and launcher.redis is not None and launcher.redis.pid is None


def test_no_market_data_redis_when_turned_off_or_when_redis_url_is_given(tmp_path: Path) -> None:
    off = Launcher(
        LaunchOptions(
            var_dir=tmp_path / "off", traceview=False, metrics_port=None, market_redis=False
        ),
        environ={},
    )
    given = Launcher(
        LaunchOptions(var_dir=tmp_path / "given", traceview=False, metrics_port=None),
        environ={"MARKET_REDIS_URL": "redis://ticks.internal:6379/0"},
    )
    try:
        off.start_redis()
        given.start_redis()
        assert [u.label for u in off.redises] == ["redis"] and off.market_redis_url == ""
        assert "MARKET_REDIS_URL" not in off.child_env(stand_in(tmp_path, "execution"))
        assert [u.label for u in given.redises] == ["redis"]
        env = given.child_env(stand_in(tmp_path, "execution"))
        assert env["MARKET_REDIS_URL"] == "redis://ticks.internal:6379/0"
    finally:
        off.stop()
        given.stop()
