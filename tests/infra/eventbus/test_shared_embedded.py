"""Services started on their own share one embedded Redis, and it ends with the last of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from backend.infra.eventbus._embedded import live_users

ROOT = Path(__file__).resolve().parents[3]

# What a service started the seed's way does about Redis: resolve it, then use it until killed.
SERVICE = (
    "import time\n"
    "from backend.infra.eventbus import resolve_redis_url\n"
    "print(resolve_redis_url(), flush=True)\n"
    "time.sleep(600)\n"
)


def start_service(data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(EMBEDDED_REDIS_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", SERVICE], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def poll(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_shared_redis_outlives_the_first_service_and_ends_with_the_last(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "redis"
    first = start_service(data_dir)
    second = None
    state: dict[str, int] = {}
    try:
        assert first.stdout is not None
        url = first.stdout.readline().strip()
        second = start_service(data_dir)
        assert second.stdout is not None
        assert second.stdout.readline().strip() == url  # one server for both
        state = json.loads((data_dir / "embedded.json").read_text())
        assert sorted(live_users(data_dir)) == sorted([first.pid, second.pid])

        first.send_signal(signal.SIGKILL)  # the one that started it, killed outright
        first.wait(10)
        time.sleep(1.5)  # three rounds of the guardian
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            assert client.ping()  # the other service still has its Redis
        finally:
            client.close()

        second.send_signal(signal.SIGKILL)
        second.wait(10)
        poll(lambda: not alive(state["pid"]) and not alive(state["guardian"]), 10, "Redis gone")
        assert not (data_dir / "embedded.json").exists()
        assert live_users(data_dir) == []
        # The data stays for the next start: a new service gets a new server on it.
        third = start_service(data_dir)
        try:
            assert third.stdout is not None
            assert third.stdout.readline().startswith("redis://127.0.0.1:")
            restarted = json.loads((data_dir / "embedded.json").read_text())
            state = restarted
        finally:
            third.kill()
            third.wait(10)
        poll(lambda: not alive(restarted["guardian"]), 10, "the second guardian gone")
        assert not alive(restarted["pid"])
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait(10)
        # Whatever failed above, no Redis or guardian of this test stays behind.
        for path in [data_dir / "embedded.json"]:
            if path.exists():
                leftover = json.loads(path.read_text())
                for pid in (leftover["pid"], leftover.get("guardian")):
                    if pid and alive(pid):
                        os.kill(pid, signal.SIGKILL)
        for pid in (state.get("pid"), state.get("guardian")):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
