"""`make run`: the trading pipeline's six services as processes on embedded defaults, Ctrl-C stops.

    python -m backend.run

Starts (or uses `REDIS_URL`) one Redis, then ai-engine, execution, risk-safety,
portfolio-intelligence, trading-bot and eventbus-bridge as separate processes, each on its
port; waits until every `/health/ready` answers 200; prints where to look and a line per
fill. State lives under `./var` (SQLite files, Redis data); each service's
JSON log goes to `./var/log/<service>.log`. SIGINT or SIGTERM stops the services (SIGTERM,
then SIGKILL after `RUN_STOP_TIMEOUT_S`) and then the embedded Redis.

Without `OTLP_ENDPOINT`, an embedded trace viewer (`backend.infra.traceview`) is started on
port 16686 and the services export their spans to it; with `OTLP_ENDPOINT` set, spans go there
instead (`RUN_TRACEVIEW=false` starts no viewer).

Environment: `REDIS_URL`, `DATABASE_URL` and `OTLP_ENDPOINT` are passed through;
`RUN_PORT_OFFSET` shifts every port (e.g. 10000 serves ai-engine on 18001);
`RUN_READY_TIMEOUT_S` (default 120) and `RUN_STOP_TIMEOUT_S` (default 20).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]

# Start order: what the others call first; every service also retries its dependencies.
SERVICES: tuple[tuple[str, str, int], ...] = (
    ("ai-engine", "ai_engine", 8001),
    ("execution", "execution", 8002),
    ("risk-safety", "risk_safety", 8003),
    ("portfolio-intelligence", "portfolio_intelligence", 8004),
    ("trading-bot", "trading_bot", 8006),
    ("eventbus-bridge", "eventbus_bridge", 8012),
)
TRACEVIEW_PORT = 16686


class LaunchError(Exception):
    """A service could not be started or did not become ready."""


@dataclass
class Child:
    """One service process and where its log goes."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    ready_path: str = "/health/ready"
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env_name(self) -> str:
        return self.name.upper().replace("-", "_") + "_URL"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + _readable(line) for line in text.strip().splitlines()[-lines:])


def _readable(line: str) -> str:
    """A JSON log line as `LEVEL logger: message key=value…`; anything else as it is."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:400]
    if not isinstance(record, dict):
        return line[:400]
    skip = {"time", "level", "logger", "message", "color_message", "trace_id", "span_id"}
    extra = " ".join(
        f"{k}={v}"
        for k, v in record.items()
        if k not in skip and not k.startswith(("service.", "deployment."))
    )
    text = f"{record.get('level', '?')} {record.get('logger', '?')}: {record.get('message', '')}"
    return (f"{text}  {extra}" if extra else text)[:400]


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise LaunchError(f"{name}={raw!r} is not a number") from None


def _get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _say(message: str) -> None:
    print(message, flush=True)


class Launcher:
    """Starts the services, waits for them, reports fills, and stops everything on a signal."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.log_dir = var_dir / "log"
        offset = int(_env_float("RUN_PORT_OFFSET", 0))
        self.children = [
            Child(
                name,
                [str(ROOT / "microservices" / package / "main.py")],
                port + offset,
                self.log_dir / f"{name}.log",
            )
            for name, package, port in SERVICES
        ]
        self.otlp_endpoint = os.environ.get("OTLP_ENDPOINT", "").strip()
        self.traceview: Child | None = None
        if not self.otlp_endpoint and os.environ.get("RUN_TRACEVIEW", "true").lower() != "false":
            port = TRACEVIEW_PORT + offset
            self.traceview = Child(
                "traceview",
                ["-m", "backend.infra.traceview", "--port", str(port)],
                port,
                self.log_dir / "traceview.log",
                ready_path="/api/traces",
            )
            self.otlp_endpoint = self.traceview.url
        too_high = [c.name for c in self.processes if not 0 < c.port < 65536]
        if too_high:
            raise LaunchError(
                f"RUN_PORT_OFFSET={offset} puts {', '.join(too_high)} past port 65535"
            )
        self.ready_timeout_s = _env_float("RUN_READY_TIMEOUT_S", 120.0)
        self.stop_timeout_s = _env_float("RUN_STOP_TIMEOUT_S", 20.0)
        self.stopping = threading.Event()
        self.redis: Any = None
        self.redis_url = ""

    # Start -------------------------------------------------------------------------------------

    def start_redis(self) -> None:
        url = os.environ.get("REDIS_URL", "").strip()
        if url:
            self.redis_url = url
            return
        from backend.infra.eventbus import EmbeddedRedis

        port = int(_env_float("EMBEDDED_REDIS_PORT", 0))
        self.redis = EmbeddedRedis(self.var_dir / "redis", port=port)
        self.redis_url = self.redis.start()

    def child_env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PORT=str(child.port),
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        for other in self.children:
            env[other.env_name] = other.url
        if self.traceview is not None:
            env.update(
                OTLP_ENDPOINT=self.otlp_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"
            )
        return env

    @property
    def processes(self) -> list[Child]:
        """Every child process: the trace viewer (if any) first, then the services."""
        return ([self.traceview] if self.traceview else []) + self.children

    def start_services(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.processes:
            child.log_file = open(child.log_path, "ab")  # noqa: SIM115 - closed in stop()
            # A session of its own: the terminal's Ctrl-C reaches only this launcher, which
            # then stops the services in order instead of all of them racing each other.
            child.process = subprocess.Popen(
                [sys.executable, *child.args],
                env=self.child_env(child),
                stdin=subprocess.DEVNULL,
                stdout=child.log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(self.processes)
        while pending:
            if self.stopping.is_set():
                raise LaunchError("interrupted while starting")
            for child in list(pending):
                if not child.alive():
                    raise LaunchError(
                        f"{child.name} exited during start-up (code "
                        f"{child.process.returncode if child.process else '?'}); "
                        f"the end of {child.log_path}:\n{child.log_tail()}"
                    )
                status, _ = _get_json(child.url + child.ready_path, timeout_s=1.0)
                if status == 200:
                    pending.remove(child)
                    _say(f"  ready  {child.name:<24} {child.url}")
            if pending and time.monotonic() > deadline:
                child = pending[0]
                _, body = _get_json(child.url + child.ready_path, timeout_s=1.0)
                raise LaunchError(
                    f"{child.name} was not ready after {self.ready_timeout_s:g}s "
                    f"({child.ready_path}: {json.dumps(body) if body else 'no answer'}); "
                    f"the end of {child.log_path}:\n{child.log_tail()}"
                )
            if pending:
                self.stopping.wait(0.2)

    def print_guide(self) -> None:
        lines = ["", "Quantum Trader is running.", ""]
        for child in self.processes:
            pid = child.process.pid if child.process else "?"
            lines.append(f"  {child.name:<24} {child.url:<24} pid {pid}")
        lines += [
            "",
            "  every service: /health/ready  /health/live  /metrics"
            "   (HTTP services: /docs for the API)",
            f"  trading-bot:   {self.child('trading-bot').url}/status  /decisions",
            f"  ai-engine:     {self.child('ai-engine').url}/models",
            f"  portfolio:     {self.child('portfolio-intelligence').url}/portfolio",
            f"  logs (JSON):   {self.log_dir}/<service>.log",
            f"  redis:         {self.redis_url}"
            + (f" (embedded, pid {self.redis.pid})" if self.redis else ""),
            "  traces:        "
            + (
                f"{self.traceview.url}  (embedded viewer: search a client order id or symbol)"
                if self.traceview
                else (self.otlp_endpoint or "not exported (tracing off)")
            ),
            "",
            "Fills appear below as they happen. Ctrl-C stops everything.",
            "",
        ]
        _say("\n".join(lines))

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    # Run ---------------------------------------------------------------------------------------

    def watch(self) -> int:
        """Print each new fill until a signal arrives; a service that dies ends the run."""
        seen: set[str] = set()
        execution = self.child("execution").url
        portfolio = self.child("portfolio-intelligence").url
        while not self.stopping.wait(1.0):
            for child in self.processes:
                if not child.alive():
                    _say(
                        f"\n{child.name} stopped unexpectedly; the end of {child.log_path}:\n"
                        f"{child.log_tail()}"
                    )
                    return 1
            for fill in _fills(execution) or _fills(portfolio):
                fill_id = str(fill.get("fill_id", ""))
                if fill_id and fill_id not in seen:
                    seen.add(fill_id)
                    _say(_describe(fill))
        return 0

    # Stop --------------------------------------------------------------------------------------

    def stop(self) -> None:
        # The viewer is stopped last, so it receives the services' final spans.
        for child in reversed(self.children):
            if child.alive() and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"  {child.name} did not stop in {self.stop_timeout_s:g}s; killing it")
                child.process.kill()
                child.process.wait()
            if child.log_file is not None:
                child.log_file.close()
        if self.traceview is not None and self.traceview.process is not None:
            viewer = self.traceview.process
            if viewer.poll() is None:
                viewer.send_signal(signal.SIGTERM)
            try:
                viewer.wait(5)
            except subprocess.TimeoutExpired:
                viewer.kill()
                viewer.wait()
            if self.traceview.log_file is not None:
                self.traceview.log_file.close()
        if self.redis is not None:
            self.redis.stop()
        _say("Stopped.")

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            _say(f"\n{signal.Signals(signum).name} received: stopping the services...")
        self.stopping.set()


def _fills(base_url: str) -> list[dict[str, Any]]:
    status, body = _get_json(base_url + "/fills?limit=200")
    if status != 200 or body is None:
        return []
    items = body if isinstance(body, list) else body.get("data") or body.get("fills") or []
    return sorted(
        (f for f in items if isinstance(f, dict)),
        key=lambda f: (str(f.get("filled_at", f.get("ts_ms", ""))), str(f.get("fill_id", ""))),
    )


def _describe(fill: dict[str, Any]) -> str:
    return (
        f"  fill  {fill.get('side', '?'):<4} {fill.get('quantity', '?')} "
        f"{fill.get('symbol', '?')} @ {fill.get('price', '?')}  fee {fill.get('fee', '?')}  "
        f"order {fill.get('client_order_id', '?')}"
    )


def main() -> int:
    try:
        launcher = Launcher(Path(os.environ.get("RUN_VAR_DIR", "var")))
    except LaunchError as exc:
        _say(f"Could not start: {exc}")
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, launcher.on_signal)
    code = 0
    try:
        _say(f"Starting Quantum Trader (state in {launcher.var_dir}/, logs in {launcher.log_dir}/)")
        launcher.start_redis()
        launcher.start_services()
        launcher.wait_ready()
        launcher.print_guide()
        code = launcher.watch()
    except LaunchError as exc:
        _say(f"\nCould not start: {exc}")
        code = 1
    finally:
        launcher.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
