"""`quantum-trader run`: every built service as a process on embedded defaults; Ctrl-C stops.

Starts (or uses `REDIS_URL`) one Redis, then each built service of the catalogue in its start
order as `python -m quantum_trader serve <name>`, on its port; waits until every
`/health/ready` answers 200; prints where to look and a line per fill booked in
portfolio-intelligence's ledger. State lives under the var directory (`./var`, or
`RUN_VAR_DIR`): the services' SQLite files, the embedded Redis's data, the installation's
secrets (`secrets.env`) and each service's JSON log (`log/<service>.log`). SIGINT or SIGTERM
stops the services (SIGTERM, then SIGKILL after the stop timeout) and then the embedded Redis.

Without `OTLP_ENDPOINT`, an embedded trace viewer is started on port 16686 and the services
export their spans to it; with `OTLP_ENDPOINT` set, spans go there instead.
`REDIS_URL`, `DATABASE_URL` and `OTLP_ENDPOINT` are passed through to the services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
from pydantic import ValidationError

from backend.infra.db import default_url
from backend.infra.eventbus import EmbeddedRedis, EmbeddedRedisError
from backend.infra.observability import redact_url
from backend.infra.service import BUILT_SERVICES, ServiceSpec
from microservices.contracts.portfolio_intelligence import FillPublic, FillsPublic

from .local_secrets import LocalSecrets, SecretsError, load_or_create

# The repository root, so children of a checkout that was not installed find its packages.
ROOT = Path(__file__).resolve().parents[1]
TRACEVIEW_PORT = 16686
LEDGER = "portfolio-intelligence"


class LaunchError(Exception):
    """A service could not be started or did not become ready."""


@dataclass(frozen=True)
class LaunchOptions:
    """How `run` starts the system (the command line fills these from options or variables)."""

    var_dir: Path = Path("var")
    port_offset: int = 0
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 20.0
    traceview: bool = True
    redis_port: int = 0


@dataclass
class Child:
    """One child process (a service, or the trace viewer) and where its log goes."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    spec: ServiceSpec | None = None
    ready_path: str = "/health/ready"
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + _readable(line) for line in text.strip().splitlines()[-lines:])


def describe_fill(fill: FillPublic) -> str:
    """The one line `run` prints per booked fill."""
    return (
        f"  fill  {fill.side:<4} {fill.quantity} {fill.symbol} @ {fill.price}  "
        f"fee {fill.fee}  order {fill.client_order_id}"
    )


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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


def _say(message: str) -> None:
    print(message, flush=True)


class Launcher:
    """Starts the services, waits for them, reports fills, and stops everything on a signal."""

    def __init__(self, options: LaunchOptions, environ: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.environ = dict(os.environ if environ is None else environ)
        self.var_dir = options.var_dir
        self.log_dir = self.var_dir / "log"
        offset = options.port_offset
        self.children = [
            Child(
                spec.name,
                ["-m", "quantum_trader", "serve", spec.name],
                spec.port + offset,
                self.log_dir / f"{spec.name}.log",
                spec=spec,
            )
            for spec in BUILT_SERVICES
        ]
        self.otlp_endpoint = self.environ.get("OTLP_ENDPOINT", "").strip()
        self.traceview: Child | None = None
        if not self.otlp_endpoint and options.traceview:
            port = TRACEVIEW_PORT + offset
            self.traceview = Child(
                "traceview",
                ["-m", "quantum_trader", "traceview", "--port", str(port)],
                port,
                self.log_dir / "traceview.log",
                ready_path="/api/traces",
            )
            self.otlp_endpoint = self.traceview.url
        out_of_range = [c.name for c in self.processes if not 0 < c.port < 65536]
        if out_of_range:
            raise LaunchError(
                f"a port offset of {offset} puts {', '.join(out_of_range)} outside 1-65535"
            )
        self.stopping = threading.Event()
        self.secrets: LocalSecrets | None = None
        self.http = httpx.Client(timeout=2.0)
        self.redis: EmbeddedRedis | None = None
        self.redis_url = ""
        self.started_at = datetime.now(UTC)
        self._fills_seen: set[str] = set()
        self._fills_problem: str | None = None

    # Start -------------------------------------------------------------------------------------

    def load_secrets(self) -> LocalSecrets:
        """Read (or on the first run generate) the installation's token and approval secret."""
        try:
            self.secrets = load_or_create(self.var_dir, self.environ)
        except SecretsError as exc:
            raise LaunchError(str(exc)) from exc
        self.http.headers["Authorization"] = f"Bearer {self.secrets.api_token}"
        return self.secrets

    def start_redis(self) -> None:
        url = self.environ.get("REDIS_URL", "").strip()
        if url:
            self.redis_url = url
            return
        self.redis = EmbeddedRedis(self.var_dir / "redis", port=self.options.redis_port)
        try:
            self.redis_url = self.redis.start()
        except EmbeddedRedisError as exc:
            raise LaunchError(f"the embedded Redis did not start: {exc}") from exc

    def child_env(self, child: Child) -> dict[str, str]:
        env = dict(self.environ)
        env.update(
            PORT=str(child.port),
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        for other in self.children:
            if other.spec is not None:
                env[other.spec.url_variable] = other.url
        if child.spec is not None:
            if self.secrets is None:
                raise LaunchError("the secrets are loaded before any service starts")
            env.update(self.secrets.environment())
            if not self.environ.get("DATABASE_URL", "").strip():
                # Each service's own SQLite file, under the var directory like the rest.
                env["DATABASE_URL"] = default_url(child.name, self.var_dir.resolve())
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

    def _get(self, url: str, timeout_s: float = 2.0) -> httpx.Response | None:
        try:
            return self.http.get(url, timeout=timeout_s)
        except httpx.HTTPError:
            return None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
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
                response = self._get(child.url + child.ready_path, timeout_s=1.0)
                if response is not None and response.status_code == 200:
                    pending.remove(child)
                    _say(f"  ready  {child.name:<24} {child.url}")
            if pending and time.monotonic() > deadline:
                child = pending[0]
                response = self._get(child.url + child.ready_path, timeout_s=1.0)
                answer = response.text if response is not None and response.text else "no answer"
                raise LaunchError(
                    f"{child.name} was not ready after {self.options.ready_timeout_s:g}s "
                    f"({child.ready_path}: {answer}); "
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
            f"  portfolio:     {self.child(LEDGER).url}/portfolio  /fills",
            f"  logs (JSON):   {self.log_dir}/<service>.log",
            f"  databases:     {self._databases()}",
            f"  redis:         {redact_url(self.redis_url)}"
            + (f" (embedded, pid {self.redis.pid})" if self.redis else ""),
            "  traces:        "
            + (
                f"{self.traceview.url}  (embedded viewer: search a client order id or symbol)"
                if self.traceview
                else (self.otlp_endpoint or "not exported (tracing off)")
            ),
            "",
            "Fills appear below as they are booked. Ctrl-C stops everything.",
            "",
        ]
        _say("\n".join(lines))

    def _databases(self) -> str:
        if self.environ.get("DATABASE_URL", "").strip():
            return "DATABASE_URL"
        return f"{self.var_dir}/<service>.db (SQLite)"

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    # Run ---------------------------------------------------------------------------------------

    def watch(self) -> int:
        """Print each new fill until a signal arrives; a service that dies ends the run."""
        while not self.stopping.wait(1.0):
            for child in self.processes:
                if not child.alive():
                    _say(
                        f"\n{child.name} stopped unexpectedly; the end of {child.log_path}:\n"
                        f"{child.log_tail()}"
                    )
                    return 1
            for fill in self.new_fills():
                _say(describe_fill(fill))
        return 0

    def new_fills(self) -> list[FillPublic]:
        """Fills booked since the last call, oldest first; none from before this run started."""
        url = self.child(LEDGER).url + "/fills?limit=200"
        response = self._get(url)
        if response is None or response.status_code != 200:
            return []
        try:
            page = FillsPublic.model_validate_json(response.content)
        except ValidationError as exc:
            # Said once: the shape will not change while this run lasts.
            if self._fills_problem is None:
                self._fills_problem = str(exc)
                _say(f"  (cannot read the fills from {url}: {exc.errors()[0]['msg']})")
            return []
        fresh = [
            f
            for f in page.data
            if f.fill_id not in self._fills_seen and _as_utc(f.filled_at) >= self.started_at
        ]
        self._fills_seen.update(f.fill_id for f in fresh)
        return sorted(fresh, key=lambda f: (_as_utc(f.filled_at), f.fill_id))

    # Stop --------------------------------------------------------------------------------------

    def stop(self) -> None:
        # The viewer is stopped last, so it receives the services' final spans.
        for child in reversed(self.children):
            if child.alive() and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.stop_timeout_s
        for child in self.children:
            self._reap(child, deadline)
        if self.traceview is not None:
            if self.traceview.alive() and self.traceview.process is not None:
                self.traceview.process.send_signal(signal.SIGTERM)
            self._reap(self.traceview, time.monotonic() + 5)
        if self.redis is not None:
            self.redis.stop()
        self.http.close()
        _say("Stopped.")

    def _reap(self, child: Child, deadline: float) -> None:
        """Wait for a child told to stop; SIGKILL it once `deadline` has passed."""
        if child.process is not None:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"  {child.name} did not stop in time; killing it")
                child.process.kill()
                child.process.wait()
        if child.log_file is not None:
            child.log_file.close()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            _say(f"\n{signal.Signals(signum).name} received: stopping the services...")
        self.stopping.set()


def run(options: LaunchOptions) -> int:
    """Start everything, report fills until SIGINT/SIGTERM, stop; the process's exit status."""
    try:
        launcher = Launcher(options)
    except LaunchError as exc:
        _say(f"Could not start: {exc}")
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, launcher.on_signal)
    code = 0
    try:
        _say(f"Starting Quantum Trader (state in {launcher.var_dir}/, logs in {launcher.log_dir}/)")
        _say(launcher.load_secrets().describe())
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
