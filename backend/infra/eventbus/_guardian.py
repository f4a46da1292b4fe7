"""The owner of a shared embedded Redis: starts it, and stops it when its last user is gone.

`python -m backend.infra.eventbus._guardian DATA_DIR PORT`, started by `resolve_redis_url` in
a session of its own. It writes `embedded.json` once the server answers, then checks twice a
second which registered users (`DATA_DIR/users/<pid>`) are alive; when none is, it stops the
server (SIGTERM: Redis flushes its append-only file) and exits. A SIGTERM or SIGINT to the
guardian does the same at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ._embedded import _LOCK_FILE, _STATE_FILE, EmbeddedRedis, live_users

POLL_S = 0.5
MAX_RESTARTS = 5


def main(data_dir: Path, port: int) -> int:
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = EmbeddedRedis(data_dir, port=port)
    server.start()
    state_path = data_dir / _STATE_FILE

    def announce() -> None:
        state = {"pid": server.pid, "port": server.port, "guardian": os.getpid()}
        state_path.write_text(json.dumps(state))
        print(f"embedded redis pid {server.pid} on port {server.port}", flush=True)

    announce()
    restarts = 0
    try:
        while not stopping.wait(POLL_S):
            # The user who started us registered first: none alive means the last one is gone.
            if not live_users(data_dir) and _last_user_gone(data_dir, state_path):
                print("no service uses the embedded redis any more; stopping it", flush=True)
                break
            if not server.running:
                if restarts == MAX_RESTARTS:
                    print(f"redis-server died {restarts + 1} times; giving up", flush=True)
                    break
                restarts += 1
                print("redis-server died; starting it again (same port and data)", flush=True)
                server.start()
                announce()
    finally:
        _forget(state_path)
        server.stop()
    return 0


def _forget(state_path: Path) -> None:
    """Remove the state file if it is still ours (a newer guardian may have written its own)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(state_path.read_text())["guardian"] == os.getpid():
            state_path.unlink()


def _last_user_gone(data_dir: Path, state_path: Path) -> bool:
    """Under the resolvers' lock, no user yet again: then the state file goes, so a service
    registering from now on starts a new server instead of attaching to this stopping one."""
    with open(data_dir / _LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if live_users(data_dir):
            return False
        _forget(state_path)
        return True


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
