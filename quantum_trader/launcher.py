"""`quantum-trader run`: every built service as a process on embedded defaults; Ctrl-C stops.

Starts (or uses `REDIS_URL`) one Redis and, beside the embedded one, a second without an
append-only file for the market ticks (`MARKET_REDIS_URL`), then each built service of the
catalogue in its start order as `python -m quantum_trader serve <name>`, on its port; waits
until every `/health/ready` answers 200; prints where to look and a line per fill booked in
portfolio-intelligence's ledger. It supervises what it started: a service, the viewer or the
embedded Redis that dies is started again after a back-off (0.5 s doubling to 10 s), said on
the console and counted in `launcher_restarts_total{process}` on its own `/metrics` (port
8090 + offset); more than 5 crashes of one process within 60 s is a crash loop: the launcher
gives up on it and stops everything, except for the viewer, which it leaves stopped while
trading goes on. A process that is alive but hung (its liveness probe, `/health/live`, unanswered
for `RUN_HANG_TIMEOUT_S`, 30 s; for the embedded Redis, PING) is killed and then started again
like a crash (`launcher_hangs_total{process}`). State lives under the var directory (`./var`, or
`RUN_VAR_DIR`): the services' SQLite files, the embedded Redis's data, the installation's
secrets (`secrets.env`) and each service's JSON log (`log/<service>.log`). SIGINT or SIGTERM
stops the services (SIGTERM, then SIGKILL after the stop timeout) and then the embedded Redis
servers.

Without `OTLP_ENDPOINT`, the embedded collector and trace viewer is started (viewer on 16686,
OTLP/gRPC on 4317, OTLP/HTTP on 4318, all moved by the port offset) and the services export
their spans and logs to it over OTLP/HTTP; it keeps them in `traces/spans.sqlite` under the var
directory, so they survive a restart. With `OTLP_ENDPOINT` set, spans go there instead.
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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
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
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
METRICS_PORT = 8090
LEDGER = "portfolio-intelligence"
REDIS = "redis"
MARKET_REDIS = "redis-market"

# The launcher's own metrics, apart from any service's (it is not a service).
METRICS = CollectorRegistry(auto_describe=True)
RESTARTS = Counter(
    "launcher_restarts_total",
    "Processes the launcher started again after they died.",
    ["process"],
    registry=METRICS,
)
CRASHES = Counter(
    "launcher_crashes_total",
    "Processes of the launcher that died without being asked to.",
    ["process"],
    registry=METRICS,
)
UP = Gauge("launcher_process_up", "1 while the process runs.", ["process"], registry=METRICS)
HANGS = Counter(
    "launcher_hangs_total",
    "Processes the launcher killed because their liveness probe went unanswered.",
    ["process"],
    registry=METRICS,
)
GAVE_UP = Gauge(
    "launcher_gave_up",
    "1 once the launcher stopped restarting the process (a crash loop).",
    ["process"],
    registry=METRICS,
)


class LaunchError(Exception):
    """A service could not be started or did not become ready."""


@dataclass(frozen=True)
class LaunchOptions:
    """How `run` starts the system (the command line fills these from options or variables)."""

    var_dir: Path = Path("var")
    port_offset: int = 0
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    """Longer than a service's own stop: its SHUTDOWN_TIMEOUT_S (20 s) for background tasks,
    then the telemetry flush's deadline (5 s); a child is killed only past both."""
    traceview: bool = True
    redis_port: int = 0
    market_redis: bool = True
    """With the embedded Redis, a second one without an append-only file for the market data
    (`MARKET_REDIS_URL`): a tick's delivery then waits for no fsync. Ignored when `REDIS_URL`
    or `MARKET_REDIS_URL` is set."""
    metrics_port: int | None = METRICS_PORT
    """The launcher's `/metrics` port before the offset; None: not served."""
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy())
    hang_timeout_s: float = 30.0
    """A running process whose liveness probe has gone unanswered this long is hung: it is
    killed and started again like a crash. 0: not watched."""
    probe_interval_s: float = 5.0
    """How often each running process's liveness is probed (also the probe's timeout)."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a process that died is started again, and when the launcher gives up on it."""

    backoff_s: float = 0.5
    """The pause before the first restart; doubles with each crash inside the window."""
    backoff_max_s: float = 10.0
    max_crashes: int = 5
    """More crashes than this within `window_s` is a crash loop: no more restarts."""
    window_s: float = 60.0


@dataclass
class Restarts:
    """The recent crashes of one supervised process, and when it is due to start again."""

    policy: RestartPolicy
    crashes: deque[float] = field(default_factory=deque)
    due_at: float | None = None
    gave_up: bool = False
    since: float = 0.0
    """When the process died (monotonic), to say how long it was away."""

    def crashed(self, now: float) -> float | None:
        """Record a crash at `now`: the pause before the restart, or None for a crash loop."""
        self.since = now
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.policy.window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.policy.max_crashes:
            self.gave_up = True
            self.due_at = None
            return None
        delay = min(
            self.policy.backoff_max_s, self.policy.backoff_s * 2.0 ** (len(self.crashes) - 1)
        )
        self.due_at = now + delay
        return delay


@dataclass
class SupervisedRedis:
    """An embedded Redis the launcher started and watches."""

    label: str
    """Its name on the console and in the launcher's metrics (`process` label)."""
    server: EmbeddedRedis
    restarts: Restarts
    live_at: float = field(default_factory=time.monotonic)
    """When it last answered PING (monotonic)."""

    @property
    def title(self) -> str:
        return "the market-data Redis" if self.label == MARKET_REDIS else "the embedded Redis"


@dataclass
class Child:
    """One child process (a service, or the trace viewer) and where its log goes."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    spec: ServiceSpec | None = None
    ready_path: str = "/health/ready"
    live_path: str = "/health/live"
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)
    essential: bool = True
    """Trading stops without it: a crash loop of an essential child ends the run."""
    restarts: Restarts | None = None
    awaiting_ready: bool = False
    live_at: float = 0.0
    """When (monotonic) it last answered its liveness probe, or was started."""

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
        collector_ports: dict[str, int] = {}
        if not self.otlp_endpoint and options.traceview:
            # The embedded collector: spans (and logs) over OTLP/HTTP on 4318, gRPC on 4317,
            # kept on disk under the var directory, so a restart keeps them.
            port = TRACEVIEW_PORT + offset
            collector_ports = {
                "traceview (OTLP/gRPC)": OTLP_GRPC_PORT + offset,
                "traceview (OTLP/HTTP)": OTLP_HTTP_PORT + offset,
            }
            grpc_port, http_port = collector_ports.values()
            self.traceview = Child(
                "traceview",
                [
                    "-m",
                    "quantum_trader",
                    "traceview",
                    "--port",
                    str(port),
                    "--grpc-port",
                    str(grpc_port),
                    "--otlp-http-port",
                    str(http_port),
                    "--var-dir",
                    str(self.var_dir.resolve()),
                ],
                port,
                self.log_dir / "traceview.log",
                ready_path="/api/traces",
                live_path="/api/traces",
                essential=False,
            )
            self.otlp_endpoint = f"http://127.0.0.1:{http_port}"
        out_of_range = [c.name for c in self.processes if not 0 < c.port < 65536] + [
            name for name, p in collector_ports.items() if not 0 < p < 65536
        ]
        if out_of_range:
            raise LaunchError(
                f"a port offset of {offset} puts {', '.join(out_of_range)} outside 1-65535"
            )
        self.stopping = threading.Event()
        self.secrets: LocalSecrets | None = None
        self.http = httpx.Client(timeout=2.0)
        self.redis: EmbeddedRedis | None = None
        self.redis_url = ""
        self.market_redis_url = ""
        self.redises: list[SupervisedRedis] = []
        """The embedded Redis servers started here (the bus's, then the market data's)."""
        self.started_at = datetime.now(UTC)
        self._fills_seen: set[str] = set()
        self._fills_problem: str | None = None
        for child in self.processes:
            child.restarts = Restarts(options.restart)
        self.metrics_port = None if options.metrics_port is None else options.metrics_port + offset
        self._metrics_server: Any = None

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
        """`REDIS_URL`, or the embedded Redis started; with it, unless `MARKET_REDIS_URL` is set
        or the option is off, the market-data Redis (no append-only file) started too."""
        url = self.environ.get("REDIS_URL", "").strip()
        self.market_redis_url = self.environ.get("MARKET_REDIS_URL", "").strip()
        if url:
            self.redis_url = url
            return
        self.redis = EmbeddedRedis(self.var_dir / "redis", port=self.options.redis_port)
        self.redis_url = self._start_embedded(REDIS, self.redis)
        if not self.market_redis_url and self.options.market_redis:
            market = EmbeddedRedis(self.var_dir / "redis-market", appendonly=False)
            self.market_redis_url = self._start_embedded(MARKET_REDIS, market)

    def _start_embedded(self, label: str, server: EmbeddedRedis) -> str:
        unit = SupervisedRedis(label, server, Restarts(self.options.restart))
        try:
            url = server.start()
        except EmbeddedRedisError as exc:
            raise LaunchError(f"{unit.title} did not start: {exc}") from exc
        self.redises.append(unit)
        UP.labels(label).set(1)
        return url

    def child_env(self, child: Child) -> dict[str, str]:
        env = dict(self.environ)
        env.update(
            PORT=str(child.port),
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        if self.market_redis_url:
            env["MARKET_REDIS_URL"] = self.market_redis_url
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
                OTLP_ENDPOINT=self.otlp_endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                # Log records too, so the viewer shows the lines that carry a span's id.
                OTEL_LOGS_EXPORTER="otlp",
            )
        return env

    @property
    def processes(self) -> list[Child]:
        """Every child process: the trace viewer (if any) first, then the services."""
        return ([self.traceview] if self.traceview else []) + self.children

    def start_services(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.processes:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        if child.log_file is None or child.log_file.closed:
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
        child.live_at = time.monotonic()
        UP.labels(child.name).set(1)

    def serve_metrics(self) -> None:
        """The launcher's `/metrics` (restarts, crashes, up, gave up), if its port is free."""
        if self.metrics_port is None:
            return
        try:
            server, _thread = start_http_server(
                self.metrics_port, addr="127.0.0.1", registry=METRICS
            )
        except OSError as exc:
            _say(f"  (the launcher's metrics are not served: port {self.metrics_port}: {exc})")
            self.metrics_port = None
            return
        self._metrics_server = server

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
                    child.live_at = time.monotonic()
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
            "  supervisor:    "
            + (
                f"http://127.0.0.1:{self.metrics_port}/metrics  (restarts, crashes)"
                if self.metrics_port
                else "metrics not served"
            ),
            f"  databases:     {self._databases()}",
            f"  redis:         {redact_url(self.redis_url)}"
            + (f" (embedded, pid {self.redis.pid})" if self.redis else ""),
            *self._market_redis_line(),
            "  traces:        "
            + (
                f"{self.traceview.url}  (embedded viewer: search a client order id or symbol; "
                f"OTLP in at {self.otlp_endpoint})"
                if self.traceview
                else (self.otlp_endpoint or "not exported (tracing off)")
            ),
            "",
            "Fills appear below as they are booked. Ctrl-C stops everything.",
            "",
        ]
        _say("\n".join(lines))

    def _market_redis_line(self) -> list[str]:
        if not self.market_redis_url:
            return []
        unit = next((u for u in self.redises if u.label == MARKET_REDIS), None)
        where = (
            f" (embedded, ticks only, no append-only file, pid {unit.server.pid})" if unit else ""
        )
        return [f"  market data:   {redact_url(self.market_redis_url)}{where}"]

    def _databases(self) -> str:
        if self.environ.get("DATABASE_URL", "").strip():
            return "DATABASE_URL"
        return f"{self.var_dir}/<service>.db (SQLite)"

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    # Run ---------------------------------------------------------------------------------------

    def watch(self) -> int:
        """Supervise and print each new fill until a signal arrives or a crash loop."""
        next_fills = 0.0
        for unit in self.redises:
            unit.live_at = time.monotonic()
        while not self.stopping.wait(0.2):
            code = self.supervise(time.monotonic())
            if code is not None:
                return code
            if time.monotonic() >= next_fills and self.ledger_child() is not None:
                next_fills = time.monotonic() + 1.0
                for fill in self.new_fills():
                    _say(describe_fill(fill))
        return 0

    def supervise(self, now: float) -> int | None:
        """One round: restart what died and is due; None, or the exit status on a crash loop."""
        for unit in self.redises:
            if not self._supervise_redis(unit, now):
                return 1
        for child in self.processes:
            restarts = child.restarts
            assert restarts is not None
            if restarts.gave_up:
                continue
            if restarts.due_at is not None:
                if now >= restarts.due_at and not self.stopping.is_set():
                    restarts.due_at = None
                    self._spawn(child)
                    child.awaiting_ready = True
                    RESTARTS.labels(child.name).inc()
                    pid = child.process.pid if child.process else "?"
                    _say(f"  restart {child.name}: started again (pid {pid})")
                continue
            if child.alive():
                if self._kill_if_hung(child, now):
                    continue
                if child.awaiting_ready and self._ready(child):
                    child.awaiting_ready = False
                    child.live_at = now
                    _say(
                        f"  restart {child.name}: ready again "
                        f"{now - restarts.since:.1f} s after it died"
                    )
                continue
            code = child.process.returncode if child.process else None
            UP.labels(child.name).set(0)
            CRASHES.labels(child.name).inc()
            child.awaiting_ready = False
            delay = restarts.crashed(now)
            if delay is None:
                GAVE_UP.labels(child.name).set(1)
                window = f"{restarts.policy.max_crashes + 1} crashes within "
                window += f"{restarts.policy.window_s:g} s"
                if not child.essential:
                    _say(
                        f"\n{child.name} keeps crashing ({window}; exit code {code}): giving "
                        f"up on it. Trading goes on; spans are dropped and counted "
                        f"(otel_spans_dropped_total). The end of {child.log_path}:\n"
                        f"{child.log_tail(8)}"
                    )
                    continue
                _say(
                    f"\n{child.name} is in a crash loop ({window}; exit code {code}): giving "
                    f"up and stopping everything. The end of {child.log_path}:\n"
                    f"{child.log_tail()}"
                )
                return 1
            _say(
                f"\n  crash   {child.name} exited (code {code}); restarting it in {delay:g} s "
                f"(crash {len(restarts.crashes)} of {restarts.policy.max_crashes} allowed "
                f"within {restarts.policy.window_s:g} s). The end of {child.log_path}:\n"
                f"{child.log_tail(5)}"
            )
        return None

    def _supervise_redis(self, unit: SupervisedRedis, now: float) -> bool:
        """Start an embedded Redis again (same port, same data) if it died; False: give up."""
        redis, restarts, label = unit.server, unit.restarts, unit.label
        if redis.running and self._redis_hung(unit, now):
            redis.kill()
        if redis.running or restarts.gave_up or self.stopping.is_set():
            return not restarts.gave_up
        if restarts.due_at is None:
            UP.labels(label).set(0)
            CRASHES.labels(label).inc()
            delay = restarts.crashed(now)
            if delay is None:
                GAVE_UP.labels(label).set(1)
                _say(
                    f"\n{unit.title} is in a crash loop ({restarts.policy.max_crashes + 1} "
                    f"crashes within {restarts.policy.window_s:g} s): giving up and stopping "
                    f"everything. Its log: {redis.data_dir / 'redis.log'}"
                )
                return False
            _say(
                f"\n  crash   {unit.title} died; restarting it in {delay:g} s on port "
                f"{redis.port}"
                + (" with its data" if redis.appendonly else "")
                + " (every service answers 503 meanwhile)"
            )
            return True
        if now < restarts.due_at:
            return True
        restarts.due_at = None
        try:
            redis.start()
        except EmbeddedRedisError as exc:
            _say(f"  restart {label}: did not start: {exc}")
            return self._supervise_redis(unit, time.monotonic())
        unit.live_at = time.monotonic()
        RESTARTS.labels(label).inc()
        UP.labels(label).set(1)
        _say(
            f"  restart {label}: started again (pid {redis.pid}) "
            f"{time.monotonic() - restarts.since:.1f} s after it died"
        )
        return True

    def _redis_hung(self, unit: SupervisedRedis, now: float) -> bool:
        """True (and said, and counted) once an embedded Redis has left PING unanswered for
        the hang timeout; the caller kills it and the crash path starts it again."""
        limit = self.options.hang_timeout_s
        silent = now - unit.live_at
        if limit <= 0 or silent <= limit:
            return False
        HANGS.labels(unit.label).inc()
        _say(
            f"\n  hung    {unit.title} (pid {unit.server.pid or '?'}) has "
            f"not answered PING for {silent:.0f} s: killed, to be started again"
        )
        return True

    def _kill_if_hung(self, child: Child, now: float) -> bool:
        """Kill `child` if it has been silent too long: its liveness probe (or, after a
        restart, its readiness within the ready timeout). The next round restarts it."""
        limit = self.options.hang_timeout_s
        if limit <= 0 or child.process is None:
            return False
        if child.awaiting_ready:
            limit = max(limit, self.options.ready_timeout_s)
        silent = now - child.live_at
        if silent <= limit:
            return False
        probe = child.ready_path if child.awaiting_ready else child.live_path
        HANGS.labels(child.name).inc()
        _say(
            f"\n  hung    {child.name} (pid {child.process.pid}) has not answered {probe} for "
            f"{silent:.0f} s: killed, to be started again"
        )
        child.process.kill()
        child.process.wait()
        return True

    def probe_liveness(self) -> None:
        """Until the launcher stops: each running, ready process's liveness probe, in turn.

        Its own thread and HTTP client, so a hung process delays neither the supervision
        rounds nor the fills printout; `live_at` records the last answer.
        """
        interval = self.options.probe_interval_s
        with httpx.Client(timeout=interval, headers=self.http.headers) as client:
            while not self.stopping.wait(interval):
                for unit in self.redises:
                    if unit.server.answers(timeout_s=min(interval, 2.0)):
                        unit.live_at = time.monotonic()
                for child in self.processes:
                    if self.stopping.is_set():
                        return
                    if not child.alive() or child.awaiting_ready:
                        continue
                    try:
                        answered = client.get(child.url + child.live_path).status_code < 500
                    except httpx.HTTPError:
                        answered = False
                    if answered:
                        child.live_at = time.monotonic()

    def _ready(self, child: Child) -> bool:
        response = self._get(child.url + child.ready_path, timeout_s=0.5)
        return response is not None and response.status_code == 200

    def ledger_child(self) -> Child | None:
        return next((c for c in self.children if c.name == LEDGER), None)

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
        for unit in reversed(self.redises):
            unit.server.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
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
        launcher.serve_metrics()
        launcher.start_services()
        launcher.wait_ready()
        launcher.print_guide()
        if options.hang_timeout_s > 0:
            threading.Thread(target=launcher.probe_liveness, name="liveness", daemon=True).start()
        code = launcher.watch()
    except LaunchError as exc:
        _say(f"\nCould not start: {exc}")
        code = 1
    finally:
        launcher.stop()
    return code
