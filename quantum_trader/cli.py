"""`quantum-trader`, the one command: run the system, serve one service, migrate, view, bench.

    quantum-trader run                    # the whole system on embedded defaults (`make run`)
    quantum-trader serve risk-safety      # one service, as in production
    quantum-trader db upgrade             # schema migrations (also: downgrade, current, heads)
    quantum-trader traceview              # the embedded trace viewer on its own
    quantum-trader bench                  # the benchmarks (from a source checkout)
    quantum-trader webhooks redeliver     # dead-lettered webhooks, sent again
    quantum-trader traces --service execution --min-ms 50   # recent traces, as in the viewer
    quantum-trader trace qt-ae85d3ec0c850c562ecc3c0a        # a trace or an order, in the terminal
    quantum-trader status                 # every service's health, risk state, portfolio

Each subcommand imports what it needs when it runs, so `--help` stays quick.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from backend.infra.service import BUILT_SERVICES, UnknownServiceError, service_spec

if TYPE_CHECKING:
    from backend.infra.db import DatabaseSettings
    from backend.infra.service import Service

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VAR_DIR = Path("var")

_BUILT_NAMES = ", ".join(s.name for s in BUILT_SERVICES)
F = TypeVar("F", bound=Callable[..., object])

var_dir_option = click.option(
    "--var-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_VAR_DIR,
    envvar="RUN_VAR_DIR",
    show_default=True,
    show_envvar=True,
    help="Where local state lives: SQLite files, Redis data, secrets, logs.",
)


class _Listed(click.Group):
    """A group that lists its commands in the order they are declared, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Listed, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quantum-trader")
def main() -> None:
    """Quantum Trader: an observable paper-trading platform.

    `run` starts everything on one machine; `serve` runs one service the way a container does.
    """


# run ---------------------------------------------------------------------------------------------


def _seconds_option(flag: str, variable: str, default: float, text: str) -> Callable[[F], F]:
    """A positive number of seconds, from the flag or else its environment variable."""
    return click.option(
        flag,
        flag.lstrip("-").replace("-", "_") + "_s",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        envvar=variable,
        show_default=True,
        show_envvar=True,
        help=text,
    )


@main.command()
@var_dir_option
@click.option(
    "--port-offset",
    type=int,
    default=0,
    envvar="RUN_PORT_OFFSET",
    show_envvar=True,
    help="Added to every port (10000 serves ai-engine on 18001).",
)
@_seconds_option(
    "--ready-timeout", "RUN_READY_TIMEOUT_S", 120.0, "Seconds every service has to get ready."
)
@_seconds_option(
    "--stop-timeout", "RUN_STOP_TIMEOUT_S", 30.0, "Seconds between SIGTERM and SIGKILL."
)
@click.option(
    "--traceview/--no-traceview",
    default=True,
    envvar="RUN_TRACEVIEW",
    show_default=True,
    show_envvar=True,
    help="Start the embedded trace viewer when OTLP_ENDPOINT is not set.",
)
@click.option(
    "--redis-port",
    type=click.IntRange(0, 65535),
    default=0,
    envvar="EMBEDDED_REDIS_PORT",
    show_envvar=True,
    help="Port of the embedded Redis when REDIS_URL is not set (0: a free one).",
)
@click.option(
    "--market-redis/--no-market-redis",
    default=True,
    envvar="RUN_MARKET_REDIS",
    show_default=True,
    show_envvar=True,
    help="With the embedded Redis, start a second one without an append-only file for the "
    "market ticks (MARKET_REDIS_URL), so a tick's delivery waits for no fsync.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=8090,
    envvar="RUN_METRICS_PORT",
    show_default=True,
    show_envvar=True,
    help="Port (before the offset) of the launcher's own /metrics: restarts and crashes "
    "of what it supervises (0: not served).",
)
@click.option(
    "--hang-timeout",
    "hang_timeout_s",
    type=click.FloatRange(min=0),
    default=30.0,
    envvar="RUN_HANG_TIMEOUT_S",
    show_default=True,
    show_envvar=True,
    help="Seconds a running process may leave its liveness probe unanswered before it is "
    "killed and started again (0: not watched).",
)
def run(
    var_dir: Path,
    port_offset: int,
    ready_timeout_s: float,
    stop_timeout_s: float,
    traceview: bool,
    redis_port: int,
    market_redis: bool,
    metrics_port: int,
    hang_timeout_s: float,
) -> None:
    """Start the whole system on embedded defaults; Ctrl-C stops it.

    One Redis (or REDIS_URL) and one for market ticks, the trace viewer (or OTLP_ENDPOINT)
    and every built service as its own process, each on its port; then one line per booked
    fill. The first run generates an API token and an approval secret, kept in VAR_DIR/secrets.env.
    A service, the viewer or Redis that dies is started again after a back-off; a crash
    loop (more than 5 crashes within 60 s) of a service or Redis stops everything.
    One that is alive but leaves its liveness probe unanswered for the hang timeout is
    killed and started again the same way.
    """
    from .launcher import LaunchOptions
    from .launcher import run as launch

    options = LaunchOptions(
        var_dir=var_dir,
        port_offset=port_offset,
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
        traceview=traceview,
        redis_port=redis_port,
        market_redis=market_redis,
        metrics_port=metrics_port or None,
        hang_timeout_s=hang_timeout_s,
    )
    sys.exit(launch(options))


# serve -------------------------------------------------------------------------------------------


@main.command(
    help="Run one service in the foreground, as in production.\n\n"
    f"SERVICE is one of: {_BUILT_NAMES}. It listens on PORT (default: its port in the "
    "service catalogue) and reads the rest of its settings from the environment."
)
@click.argument("service")
@click.option("--host", help="Interface to listen on (overrides HOST; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (overrides PORT).")
def serve(service: str, host: str | None, port: int | None) -> None:
    try:
        spec = service_spec(service, built_only=True)
    except UnknownServiceError as exc:
        raise click.BadParameter(str(exc), param_hint="SERVICE") from None
    # The service reads its settings from the environment, like a container does.
    if host is not None:
        os.environ["HOST"] = host
    if port is not None:
        os.environ["PORT"] = str(port)
    create_service: Callable[[], Service] = importlib.import_module(spec.module).create_service
    create_service().run()


# db ----------------------------------------------------------------------------------------------


@main.group(cls=_Listed)
def db() -> None:
    """Apply or revert the schema migrations.

    The database is --url (or DATABASE_URL), else the SQLite file VAR_DIR/SERVICE.db that
    `run` gives that service.
    """


def _database_options(command: F) -> F:
    command = click.option("--url", envvar="DATABASE_URL", show_envvar=True, help="Database URL.")(
        command
    )
    command = click.option(
        "--service",
        help="The service whose SQLite file to use (default: VAR_DIR/quantum-trader.db).",
    )(command)
    return var_dir_option(command)


def _run_db(
    work: Callable[[DatabaseSettings], Coroutine[Any, Any, str]],
    url: str | None,
    service: str | None,
    var_dir: Path,
) -> None:
    """Run one migration step on the chosen database and print its answer."""
    from backend.infra.db import DatabaseError, default_url, load_database_settings

    if service is not None:
        try:
            service_spec(service)
        except UnknownServiceError as exc:
            raise click.BadParameter(str(exc), param_hint="--service") from None
    name = service or "quantum-trader"
    try:
        settings = load_database_settings(name, url=url or default_url(name, var_dir))
        click.echo(asyncio.run(work(settings)))
    except DatabaseError as error:
        raise click.ClickException(str(error)) from None


@db.command()
@click.argument("revision", default="head")
@_database_options
def upgrade(revision: str, url: str | None, service: str | None, var_dir: Path) -> None:
    """Migrate up to REVISION (default: the newest)."""
    from backend.infra.db import migrate

    async def work(settings: DatabaseSettings) -> str:
        return f"at {await migrate(settings, revision) or 'base'}"

    _run_db(work, url, service, var_dir)


@db.command()
@click.argument("revision")
@_database_options
def downgrade(revision: str, url: str | None, service: str | None, var_dir: Path) -> None:
    """Migrate down to REVISION: a revision id, -1, or base."""
    from backend.infra.db import downgrade as migrate_down

    async def work(settings: DatabaseSettings) -> str:
        return f"at {await migrate_down(settings, revision) or 'base'}"

    _run_db(work, url, service, var_dir)


@db.command()
@_database_options
def current(url: str | None, service: str | None, var_dir: Path) -> None:
    """Print the revision the database is at ("base" when empty)."""
    from backend.infra.db import current_revision

    async def work(settings: DatabaseSettings) -> str:
        return await current_revision(settings) or "base"

    _run_db(work, url, service, var_dir)


@db.command()
def heads() -> None:
    """Print the newest revision of the migration scripts."""
    from backend.infra.db import head_revision

    click.echo(head_revision())


# traceview ---------------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=16686,
    show_default=True,
    help="The viewer's port (it takes OTLP/HTTP too).",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=4317,
    show_default=True,
    help="OTLP/gRPC port; 0: no gRPC receiver.",
)
@click.option(
    "--otlp-http-port",
    type=click.IntRange(0, 65535),
    default=4318,
    show_default=True,
    help="OTLP/HTTP port; 0: only the viewer's port takes OTLP/HTTP.",
)
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The span store's SQLite file (default: VAR_DIR/traces/spans.sqlite).",
)
@click.option(
    "--max-age-h",
    type=click.FloatRange(min=0, min_open=True),
    default=168.0,
    envvar="TRACEVIEW_MAX_AGE_H",
    show_default=True,
    show_envvar=True,
    help="Traces older than this many hours are evicted.",
)
@click.option(
    "--max-mb",
    type=click.FloatRange(min=1),
    default=1024.0,
    envvar="TRACEVIEW_MAX_MB",
    show_default=True,
    show_envvar=True,
    help="Above this size the oldest traces are evicted (plain ones before orders).",
)
@click.option(
    "--tick-sample-rate",
    type=click.FloatRange(0, 1),
    default=0.1,
    envvar="TRACEVIEW_TICK_SAMPLE_RATE",
    show_default=True,
    show_envvar=True,
    help="Share of plain traces (ticks that led to no order) kept; orders, fills, denials, "
    "stops and errors are always kept.",
)
@click.option(
    "--noise-sample-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    envvar="TRACEVIEW_NOISE_SAMPLE_RATE",
    show_default=True,
    show_envvar=True,
    help="Share of health checks, metrics scrapes and idle polling kept.",
)
@var_dir_option
def traceview(
    host: str,
    port: int,
    grpc_port: int,
    otlp_http_port: int,
    store_path: Path | None,
    max_age_h: float,
    max_mb: float,
    tick_sample_rate: float,
    noise_sample_rate: float,
    var_dir: Path,
) -> None:
    """Run the embedded collector and trace viewer.

    Spans come in over OTLP (gRPC on --grpc-port, HTTP on --otlp-http-port and on the viewer's
    own port) and are kept on disk, so they survive a restart.
    """
    from backend.infra.traceview import Retention, serve

    from .dashboard import create_viewer

    path = (store_path or var_dir / "traces" / "spans.sqlite").resolve()
    serve(
        path,
        host=host,
        port=port,
        grpc_port=grpc_port or None,
        otlp_http_port=otlp_http_port or None,
        retention=Retention(max_age_h, max_mb, tick_sample_rate, noise_sample_rate),
        make_app=lambda store, routes: create_viewer(store, ingest_routes=routes),
    )


# traces, trace, status ---------------------------------------------------------------------------

viewer_option = click.option(
    "--viewer",
    envvar="TRACEVIEW_URL",
    show_envvar=True,
    help="The trace viewer's URL (default: http://127.0.0.1:16686, moved by --port-offset).",
)
offset_option = click.option(
    "--port-offset",
    type=int,
    default=0,
    envvar="RUN_PORT_OFFSET",
    show_envvar=True,
    help="The offset `run` was given: added to the default ports.",
)


def _viewer_url(viewer: str | None, port_offset: int) -> str:
    return viewer or f"http://127.0.0.1:{16686 + port_offset}"


def _viewer_get(viewer: str, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET one of the viewer's JSON routes; None on 404, a clear error for anything else."""
    import httpx

    url = viewer.rstrip("/") + path
    try:
        response = httpx.get(url, params=params, timeout=10.0)
    except httpx.HTTPError as exc:
        raise click.ClickException(
            f"no answer from the trace viewer at {viewer} ({type(exc).__name__}); start it with "
            "`quantum-trader run` or `quantum-trader traceview`, or pass --viewer"
        ) from None
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text[:300]
        raise click.ClickException(f"the viewer refused {path}: {detail}")
    return response.json()


@main.command()
@viewer_option
@offset_option
@click.option("--service", help="A span of this service.")
@click.option("--operation", help="A span of this name (e.g. 'POST /orders').")
@click.option("--min-ms", type=click.FloatRange(min=0), help="A span at least this long.")
@click.option("--max-ms", type=click.FloatRange(min=0), help="A span at most this long.")
@click.option("--error/--no-error", default=None, help="Only traces with (or without) an error.")
@click.option("--attr", multiple=True, metavar="KEY=VALUE", help="A span attribute (repeatable).")
@click.option("--key", help="A business key: client order id, order id, symbol, model version.")
@click.option("--lookback", help="Only traces that started this long ago at most (15m, 2h).")
@click.option("--noise", is_flag=True, help="Include health checks, scrapes and idle polling.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def traces(
    viewer: str | None,
    port_offset: int,
    service: str | None,
    operation: str | None,
    min_ms: float | None,
    max_ms: float | None,
    error: bool | None,
    attr: tuple[str, ...],
    key: str | None,
    lookback: str | None,
    noise: bool,
    limit: int,
) -> None:
    """Recent traces, newest first, with the viewer's search filters."""
    for item in attr:
        if "=" not in item or item.startswith("="):
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--attr")
    params = {
        "service": service,
        "operation": operation,
        "min_ms": min_ms,
        "max_ms": max_ms,
        "error": None if error is None else str(error).lower(),
        "attr": " ".join(attr) or None,
        "key": key,
        "lookback": lookback,
        "noise": "1" if noise else None,
        "limit": limit,
    }
    wanted = {k: v for k, v in params.items() if v is not None}
    answer = _viewer_get(_viewer_url(viewer, port_offset), "/api/traces", wanted)
    found = (answer or {}).get("data", [])
    if not found:
        click.echo("no traces match")
        return
    import time

    for t in found:
        when = time.strftime("%H:%M:%S", time.localtime(t["start_ns"] / 1e9))
        errors = f"  {t['errors']} errors" if t["errors"] else ""
        click.echo(
            f"{when}  {t['trace_id']}  {t['duration_ms']:9.1f} ms  {t['spans']:4d} spans  "
            f"{t['root']}{errors}"
        )


@main.command()
@click.argument("ident", metavar="TRACE_ID|ORDER_ID")
@viewer_option
@offset_option
@click.option("--width", type=click.IntRange(10, 200), default=40, show_default=True)
def trace(ident: str, viewer: str | None, port_offset: int, width: int) -> None:
    """One trace as a waterfall in the terminal, or every trace of an order (a client order id
    or an order id) on one time axis. `*` marks the critical path."""
    from backend.infra.traceview._analysis import critical_path, operation, tree_order
    from backend.infra.traceview._store import StoredSpan

    viewer = _viewer_url(viewer, port_offset)
    answer = None
    if len(ident) == 32 and all(c in "0123456789abcdefABCDEF" for c in ident):
        answer = _viewer_get(viewer, f"/api/traces/{ident.lower()}")
    states: list[str] = []
    if answer is None:
        answer = _viewer_get(viewer, f"/api/order/{ident}")
        if answer is None:
            raise click.ClickException(f"no trace and no order {ident!r} in the viewer")
        states = answer["states"]
    spans = [
        StoredSpan(
            **{
                k: v
                for k, v in raw.items()
                if k in StoredSpan.__dataclass_fields__ and k not in ("links", "events")
            },
            links=[(t, s) for t, s in raw["links"]],
            events=[(n, a) for n, a in raw["events"]],
        )
        for raw in answer["data"]
    ]
    start = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - start, 1)
    by_trace: dict[str, list[StoredSpan]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    services = sorted({s.service for s in spans})
    click.echo(
        f"{len(spans)} spans, {len(services)} services, {len(by_trace)} trace(s), "
        f"{total / 1e6:.1f} ms" + (f"; states: {' → '.join(states)}" if states else "")
    )
    for trace_id, mine in sorted(by_trace.items(), key=lambda kv: min(s.start_ns for s in kv[1])):
        critical = {g.span_id for g in critical_path(mine)}
        click.echo(f"\ntrace {trace_id}")
        for s, depth in tree_order(mine):
            left = int((s.start_ns - start) / total * width)
            length = max(1, round((s.end_ns - s.start_ns) / total * width))
            bar = (" " * left + "█" * length)[:width].ljust(width)
            mark = "*" if s.span_id in critical else " "
            error = " ERROR" if s.error else ""
            link = f" → {len(s.links)} link(s)" if s.links else ""
            name = f"{'  ' * depth}{s.service}: {operation(s)}"
            click.echo(f"{mark} |{bar}| {s.duration_ms:9.3f} ms  {name}{error}{link}")


@main.command()
@offset_option
def status(port_offset: int) -> None:
    """Every service's health, the risk state and the portfolio, in a few lines.

    The services are found at their `<NAME>_URL` (e.g. RISK_SAFETY_URL), else their catalogue
    ports plus the offset; QT_API_TOKEN is sent when set. Exits 1 when a service is not ready.
    """
    import httpx

    from backend.infra.service import AccessSettings

    from .dashboard import gather, service_urls

    token = AccessSettings().api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def work() -> Any:
        async with httpx.AsyncClient(headers=headers, timeout=3.0) as http:
            return await gather(http, service_urls(port_offset), orders=5, equity=2)

    board = asyncio.run(work())
    for h in board.health:
        click.echo(f"{h.service:24s} {'ready' if h.ready else 'NOT READY':10s} {h.detail[:60]}")
    if board.risk is not None:
        r = board.risk
        click.echo(f"risk: {r.state} (epoch {r.epoch}) {r.reason}")
    else:
        click.echo(f"risk: unknown ({board.errors.get('risk', '')[:120]})")
    p = board.portfolio
    if p is not None:
        held = ", ".join(f"{x.symbol} {x.quantity}" for x in p.positions if x.quantity) or "none"
        click.echo(
            f"portfolio: equity {p.equity}, cash {p.cash}, PnL {p.total_pnl} "
            f"(fees {p.fees}); positions: {held}"
        )
    else:
        click.echo(f"portfolio: unknown ({board.errors.get('portfolio', '')[:120]})")
    if not all(h.ready for h in board.health):
        sys.exit(1)


# bench -------------------------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("benchmarks", nargs=-1)
def bench(benchmarks: tuple[str, ...]) -> None:
    """Run the benchmarks: all, or the BENCHMARKS named (bench_http, bench_eventbus, halt_window,
    rl_training, clm_drift, startup, collector, viewer, order_path); options after one name go
    to that benchmark (`quantum-trader bench order_path --seconds 5`).

    They print ratios against a bare baseline. The benchmarks are part of a source checkout,
    not of the installed package.
    """
    if not (ROOT / "bench" / "__main__.py").is_file():
        raise click.ClickException(f"no benchmarks here: {ROOT / 'bench'} is not a checkout's")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "bench", *benchmarks]
    sys.exit(subprocess.call(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": path}))


# webhooks ----------------------------------------------------------------------------------------


@main.group(cls=_Listed)
def webhooks() -> None:
    """eventbus-bridge's outgoing webhooks (docs/WEBHOOKS.md)."""


@webhooks.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
def redeliver(limit: int | None) -> None:
    """Send dead-lettered webhooks again, once each, oldest first; delivered ones are removed.

    Uses the bridge's variables (WEBHOOK_URLS, WEBHOOK_SECRET, REDIS_URL, EVENTBUS_PREFIX).
    """
    import httpx
    from pydantic import ValidationError

    from backend.infra.eventbus import EventBusSettings, create_redis_client, resolve_redis_url
    from microservices.eventbus_bridge.settings import EventbusBridgeSettings
    from microservices.eventbus_bridge.webhooks import redeliver_dead_letters

    try:
        settings = EventbusBridgeSettings()
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    if not settings.webhook_urls:
        raise click.ClickException("WEBHOOK_URLS is not set: no receiver to redeliver to")

    async def work() -> str:
        redis = create_redis_client(resolve_redis_url())
        try:
            async with httpx.AsyncClient(timeout=settings.webhook_timeout_s) as client:
                done = await redeliver_dead_letters(
                    settings, redis, EventBusSettings.from_env().prefix, client, limit=limit
                )
        finally:
            await redis.aclose()
        return f"delivered {done.delivered}, kept {done.kept}"

    click.echo(asyncio.run(work()))
