"""The order path: orders through risk-safety then execution, on the whole system.

Starts `quantum-trader run` (every built service, the embedded Redis and the trace viewer, full
tracing on) in a private var directory, stops the trading bot, and drives a closed-loop load:
at most `--in-flight` orders at once, each one POST /check at risk-safety then POST /orders at
execution with the approval: a MARKET BUY of `--quantity` SOLUSDT, then its SELL, per worker.
It prints orders/s and the latency of each hop, then checks that every order the client saw
accepted is persisted by execution and booked (once) in the portfolio's ledger: accepted =
persisted = booked; and that position-monitor, which follows the portfolio's position updates,
ends up holding the portfolio's position. CPU per order is printed for every process of the
platform (each service, the trace viewer, the embedded Redis, the launcher) and in all.

The baseline, taken in the same run against the same processes, is the bare HTTP round trip
(GET /health/live on execution at the same concurrency): the floor an order cannot go below.
The load client alone is measured too, against a bare server that answers at once.

With `--open-rate R`, orders are then offered at R per second for `--seconds` whatever the
answers (open loop, at most `--in-flight` at once), each timed from when it was due: the
latency at that rate.

With `--lone-seconds S` (default 5) orders are then sent one at a time for S seconds, the
shape of the tick path (nothing to batch with): execution's POST /orders time and CPU per
order, and accepted = persisted = booked for them too.

With `--tracing off` the services export no spans; with `--log-level WARNING` as well, the
run measures the order path without telemetry: the floor the telemetry's cost adds to.

With `--trace-seconds S` the bot trades for S seconds twice: on the fresh platform (as under
`make run`, before any load) and again after the load phases (its database and the viewer then
hold every order of the load). Each time the exported traces give the tick-to-acknowledgement
time (the tick's publication to the end of execution's POST /orders) with a per-stage
breakdown. The platform starts as `make run` does, ticks on the
market-data Redis; `RUN_MARKET_REDIS=0` in the environment runs it with ticks on the bus's
Redis, for a comparison.

    python -m bench.order_path                          # SQLite, 64 in flight, 20 s
    python -m bench.order_path --database postgres      # a private PostgreSQL database
    python -m bench.order_path --in-flight 200 --seconds 30 --trace-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench._proc import spawn, stop
from tests.support.polling import wait_until

T = TypeVar("T")

SYMBOL = "SOLUSDT"
SERVICES = {
    "ai-engine": 8001,
    "execution": 8002,
    "risk-safety": 8003,
    "portfolio-intelligence": 8004,
    "trading-bot": 8006,
}
TRACEVIEW_PORT = 16686
MONITOR_PORT = 8013
"""position-monitor's side port (its API)."""
BASELINE_PATH = "/health/live"
"""The lightest route every service has: the whole middleware stack, no work behind it."""
ORDER_PATH = ("execution", "risk-safety", "portfolio-intelligence")
"""The services every order passes (their CPU per order comes first)."""
PLATFORM_EXTRAS = ("traceview", "redis", "redis-market", "launcher")
"""The platform's processes besides the services."""
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Load:
    """What the client saw."""

    accepted: set[str] = field(default_factory=set)
    denied: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    risk_ms: list[float] = field(default_factory=list)
    execution_ms: list[float] = field(default_factory=list)
    order_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    first_refusal: str = ""
    denial_example: dict[str, str] = field(default_factory=dict)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _default_offset() -> int:
    return int(os.environ.get("BENCH_PORT_OFFSET", os.environ.get("RUN_PORT_OFFSET", "900")))


class Stack:
    """A running `quantum-trader run` and how to reach it."""

    def __init__(self, var: Path, offset: int, token: str, pid: int = 0) -> None:
        self.pid = pid
        """The launcher's pid: its children are the services."""
        self.var = var
        self.offset = offset
        self.headers = {"Authorization": f"Bearer {token}"}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{SERVICES[service] + self.offset}"

    @property
    def traceview(self) -> str:
        return f"http://127.0.0.1:{TRACEVIEW_PORT + self.offset}"


def platform_env(
    var: Path, offset: int, token: str, risk_max_orders: int, log_level: str, tracing: bool
) -> dict[str, str]:
    """The environment `quantum-trader run` gets: `make run`'s, with the bench's settings."""
    env = {
        "RUN_VAR_DIR": str(var),
        "RUN_PORT_OFFSET": str(offset),
        "RUN_METRICS_PORT": "0",
        "QT_API_TOKEN": token,
        "RISK_MAX_ORDERS": str(risk_max_orders),
        **BOT_TRADING_ENV,
        "LOG_LEVEL": log_level,
    }
    if not tracing:
        env["OTEL_SDK_DISABLED"] = "true"
    return env


@contextmanager
def stack(
    offset: int,
    database_url: str | None,
    risk_max_orders: int,
    log_level: str = "INFO",
    tracing: bool = True,
) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="bench-order-path-") as tmp:
        var = Path(tmp) / "var"
        token = secrets.token_urlsafe(24)
        env = platform_env(var, offset, token, risk_max_orders, log_level, tracing)
        if database_url:
            env["DATABASE_URL"] = database_url
        log = open(Path(tmp) / "run.out", "wb")  # noqa: SIM115 - closed below
        proc = spawn(["-m", "quantum_trader", "run"], env=env, stdout=log.fileno())
        try:
            s = Stack(var, offset, token, proc.pid)
            with httpx.Client(timeout=2) as client:

                def ready() -> bool:
                    if proc.poll() is not None:
                        tail = (Path(tmp) / "run.out").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"quantum-trader run exited:\n{tail}")
                    try:
                        return all(
                            client.get(s.url(name) + "/health/ready").status_code == 200
                            for name in SERVICES
                        )
                    except httpx.HTTPError:
                        return False

                wait_until(ready, 180, "every service to be ready", 0.5)
            yield s
        finally:
            stop_run(proc)
            log.close()


def stop_run(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT: the launcher stops its children in order
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stop(proc)


class Connection:
    """One keep-alive HTTP/1.1 connection, as light as a client can be.

    httpx costs about a millisecond of CPU per request, which on this machine makes the load
    generator the bottleneck well below the target rate; this speaks just enough HTTP/1.1
    (Content-Length bodies, keep-alive) to drive the services.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host}:{port}\r\n{extra}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        data = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        for attempt in (0, 1):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(data)
                return await self._read(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the server closed: reconnect once, then give up.
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@dataclass(frozen=True)
class Part:
    """One client process's share of the load (picklable: it crosses a process boundary)."""

    risk_url: str
    execution_url: str
    headers: dict[str, str]
    seconds: float
    in_flight: int
    quantity: str
    price: str
    prefix: str
    rate: float = 0.0
    """Orders per second offered (open loop), 0: each worker sends its next order as soon as
    the last one is answered (closed loop)."""


async def _drive_part(part: Part) -> Load:
    load = Load()
    counter = iter(range(10**9))
    began = time.perf_counter()
    stop_at = began + part.seconds
    slots = iter(range(10**9))
    interval = 1.0 / part.rate if part.rate else 0.0

    async def due() -> float | None:
        """When the next order is due (None: the run is over); waits for it if open loop."""
        if not interval:
            now = time.perf_counter()
            return now if now < stop_at else None
        at = began + next(slots) * interval
        if at >= stop_at:
            return None
        if (delay := at - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        # Timed from when it was due, not from when a worker got to it: an order that waited
        # for a free worker counts its wait (no coordinated omission).
        return at

    async def worker() -> None:
        risk = Connection(part.risk_url, part.headers)
        execution = Connection(part.execution_url, part.headers)
        # Each worker buys, then sells what it bought: the position stays bounded whatever
        # the rate, so no exposure limit ends the run.
        side = "SELL"
        try:
            while (t0 := await due()) is not None:
                cid = f"{part.prefix}-{next(counter)}"
                side = "BUY" if side == "SELL" else "SELL"
                order = {
                    "client_order_id": cid,
                    "symbol": SYMBOL,
                    "side": side,
                    "quantity": part.quantity,
                    "reduce_only": side == "SELL",
                }
                try:
                    code, body = await risk.request(
                        "POST", "/check", {**order, "price": part.price}
                    )
                    t1 = time.perf_counter()
                    if code != 200:
                        load.errors[f"check {code}"] += 1
                        side = "SELL"
                        continue
                    verdict = json.loads(body)
                    load.risk_ms.append((t1 - t0) * 1000)
                    if not verdict["approved"]:
                        load.denied[verdict["reason"]] += 1
                        load.denial_example.setdefault(verdict["reason"], verdict["detail"])
                        side = "SELL"  # buy again
                        continue
                    code, body = await execution.request(
                        "POST", "/orders", {**order, "approval": verdict["approval"]}
                    )
                    t2 = time.perf_counter()
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    load.errors[type(exc).__name__] += 1
                    side = "SELL"
                    continue
                if code not in (200, 201):
                    side = "SELL"
                    if not load.errors:
                        load.first_refusal = f"{code} {body[:300].decode(errors='replace')}"
                    load.errors[f"orders {code}"] += 1
                    continue
                load.accepted.add(cid)
                load.execution_ms.append((t2 - t1) * 1000)
                load.order_ms.append((t2 - t0) * 1000)
        finally:
            await risk.close()
            await execution.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(part.in_flight)))
    load.seconds = time.perf_counter() - started
    return load


def _run_fast(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a load generator's (or the bare server's) loop on uvloop, as the services run
    theirs: the clients share the machine with the platform they measure, and asyncio's
    own loop costs them about a third more CPU per request."""
    import uvloop

    return uvloop.run(coroutine)


def _run_part(part: Part) -> Load:
    return _run_fast(_drive_part(part))


def _shares(in_flight: int, clients: int) -> list[int]:
    clients = max(1, min(clients, in_flight))
    return [in_flight // clients + (1 if i < in_flight % clients else 0) for i in range(clients)]


def drive(
    s: Stack,
    seconds: float,
    in_flight: int,
    quantity: str,
    prefix: str,
    clients: int,
    rate: float = 0.0,
) -> Load:
    """`in_flight` workers spread over `clients` processes, closed loop or (with `rate`)
    open loop at `rate` orders/s offered in all; what they all saw."""
    with httpx.Client(timeout=10, headers=s.headers) as client:
        quotes = client.get(s.url("execution") + "/quotes").json()
    price = str(next(q["ask"] for q in quotes if q["symbol"] == SYMBOL))
    parts = [
        Part(
            s.url("risk-safety"),
            s.url("execution"),
            s.headers,
            seconds,
            share,
            quantity,
            price,
            f"{prefix}-{i}" if clients > 1 else prefix,
            rate * share / in_flight,
        )
        for i, share in enumerate(_shares(in_flight, clients))
    ]
    if len(parts) == 1:
        return _run_part(parts[0])
    with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
        loads = list(pool.map(_run_part, parts))
    total = Load()
    for load in loads:
        total.accepted |= load.accepted
        for key, n in load.denied.items():
            total.denied[key] += n
        for key, n in load.errors.items():
            total.errors[key] += n
        total.risk_ms += load.risk_ms
        total.execution_ms += load.execution_ms
        total.order_ms += load.order_ms
        total.first_refusal = total.first_refusal or load.first_refusal
        total.denial_example = {**load.denial_example, **total.denial_example}
    total.seconds = max(load.seconds for load in loads)
    return total


async def _ping_part(url: str, path: str, seconds: float, in_flight: int) -> list[float]:
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        conn = Connection(url, {})
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await conn.request("GET", path)
                lat.append((time.perf_counter() - t0) * 1000)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return lat


def _run_ping(args: tuple[str, str, float, int]) -> list[float]:
    return _run_fast(_ping_part(*args))


def ping(
    url: str, seconds: float, in_flight: int, clients: int, path: str = BASELINE_PATH
) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 ms of GET `path`: the HTTP floor, with the same clients."""
    shares = _shares(in_flight, clients)
    started = time.perf_counter()
    if len(shares) == 1:
        lat = _run_ping((url, path, seconds, shares[0]))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(shares), mp_context=ctx) as pool:
            lat = [
                x
                for part in pool.map(_run_ping, [(url, path, seconds, n) for n in shares])
                for x in part
            ]
    elapsed = time.perf_counter() - started
    return len(lat) / max(elapsed, seconds), pct(lat, 0.5), pct(lat, 0.99)


_BARE_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


async def _bare_serve(port: int, ready: Any) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_BARE_ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    ready.set()
    async with server:
        await server.serve_forever()


def _bare_main(port: int, ready: Any) -> None:
    _run_fast(_bare_serve(port, ready))


@contextmanager
def bare_server() -> Iterator[str]:
    """A process answering every request at once: what the load client alone can do."""
    from tests.support.procs import free_port

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_bare_main, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the bare server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join(10)


def service_pids(launcher: int) -> dict[str, int]:
    """The services `quantum-trader run` (pid `launcher`) started, by name."""
    return {
        n: p
        for n, p in platform_pids(launcher).items()
        if n not in PLATFORM_EXTRAS and not n.startswith("traceview")
    }


def platform_pids(launcher: int) -> dict[str, int]:
    """Every process of `quantum-trader run` (pid `launcher`), by name: its services, the trace
    viewer (the collector of every span) and its worker processes, the embedded Redis (and the
    market-data one) and the launcher itself."""
    found: dict[str, int] = {"launcher": launcher}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry.name)] = ppid
        if ppid != launcher:
            continue
        if b"serve" in args:
            found[args[args.index(b"serve") + 1].decode()] = int(entry.name)
        elif b"traceview" in args:
            found["traceview"] = int(entry.name)
        elif args[0].split(b" ")[0].endswith(b"redis-server"):  # it retitles itself
            # The market-data Redis works in its own directory (Redis moves to its --dir).
            market = os.readlink(entry / "cwd").endswith("redis-market")
            found["redis-market" if market else "redis"] = int(entry.name)
    # The viewer decodes and rolls up in processes of its own (a forkserver's children).
    viewer = found.get("traceview")
    if viewer is not None:
        children = sorted(pid for pid in parents if _descends(pid, viewer, parents))
        found.update({f"traceview child {i}": pid for i, pid in enumerate(children, 1)})
    return found


def _descends(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid in parents and parents[pid] > 1:
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by process `pid` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Accepted = persisted = booked --------------------------------------------------------------


def _rows(url: str | None, var: Path, service: str, sql: str, prefix: str) -> list[tuple[Any, ...]]:
    if url is None:
        with sqlite3.connect(f"file:{var / (service + '.db')}?mode=ro", uri=True) as db:
            return db.execute(sql.replace("$1", "?"), (prefix + "-%",)).fetchall()
    import asyncpg

    async def query() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return [tuple(r) for r in await conn.fetch(sql, prefix + "-%")]
        finally:
            await conn.close()

    return asyncio.run(query())


def reconcile(s: Stack, url: str | None, load: Load, prefix: str) -> dict[str, int]:
    orders_sql = "SELECT client_order_id FROM orders WHERE client_order_id LIKE $1"
    fills_sql = "SELECT client_order_id FROM fills WHERE client_order_id LIKE $1"
    ledger_sql = "SELECT client_order_id FROM ledger_fills WHERE client_order_id LIKE $1"
    accepted = load.accepted

    def booked() -> list[str]:
        return [r[0] for r in _rows(url, s.var, "portfolio-intelligence", ledger_sql, prefix)]

    try:
        wait_until(lambda: set(booked()) >= accepted, 60, "the portfolio to book every fill", 0.5)
    except Exception as exc:  # reported below as a mismatch
        print(f"  {exc}")
    persisted = {r[0] for r in _rows(url, s.var, "execution", orders_sql, prefix)}
    fills = [r[0] for r in _rows(url, s.var, "execution", fills_sql, prefix)]
    ledger = booked()
    return {
        "accepted": len(accepted),
        "persisted": len(persisted),
        "filled": len(fills),
        "booked": len(ledger),
        "accepted_not_persisted": len(accepted - persisted),
        "persisted_not_accepted": len(persisted - accepted),
        "fills_not_booked": len(set(fills) - set(ledger)),
        "booked_twice": len(ledger) - len(set(ledger)),
        "filled_twice": len(fills) - len(set(fills)),
    }


# Tick to acknowledgement, from the traces ----------------------------------------------------

BOT_TRADING_ENV = {
    # More decisions than the defaults (one per symbol every 5 s, confidence 0.55), through
    # the bot's documented settings, so the trace phase has enough trades for a p99. The feed
    # ticks three symbols every 500 ms; one decision per 1.5 s per symbol keeps the bot's
    # decisions on different ticks, as the defaults do.
    "BOT_DECISION_INTERVAL_MS": "1500",
    "BOT_MIN_CONFIDENCE": "0.5",
}


def monitor_follows(s: Stack, timeout_s: float = 30.0) -> tuple[bool, dict[str, str]]:
    """Whether position-monitor, which follows the portfolio's `position.updated` events, ends
    up holding the portfolio's position in SYMBOL (within `timeout_s`); both quantities."""
    held: dict[str, str] = {}
    monitor = f"http://127.0.0.1:{MONITOR_PORT + s.offset}/positions"
    with httpx.Client(timeout=5, headers=s.headers) as client:

        def same() -> bool:
            book = client.get(s.url("portfolio-intelligence") + "/portfolio").json()
            portfolio = sum(
                (Decimal(p["quantity"]) for p in book["positions"] if p["symbol"] == SYMBOL),
                Decimal(0),
            )
            watched = sum(
                (
                    Decimal(p["quantity"])
                    for status in ("OPEN", "EXITING", "ALERTED")
                    for p in client.get(monitor, params={"status": status}).json()["data"]
                    if p["symbol"] == SYMBOL
                ),
                Decimal(0),
            )
            held.update(portfolio=str(portfolio), monitor=str(watched))
            return portfolio == watched

        try:
            wait_until(same, timeout_s, "position-monitor to follow the portfolio", 0.5)
        except AssertionError:
            return False, held
    return True, held


def tick_to_ack(s: Stack, seconds: float, when: str) -> None:
    """Let the bot trade for `seconds`; the traces' tick-to-ack time and where it goes."""
    with httpx.Client(timeout=30, headers=s.headers) as client:

        def serving() -> bool:
            models = client.get(s.url("ai-engine") + "/models")
            return models.status_code == 200 and models.json()["serving"] is not None

        # ai-engine trains its first model after start-up; trading before it serves one
        # measures AI_UNAVAILABLE decisions and the training's CPU, not the tick path.
        wait_until(serving, 300, "ai-engine to serve a model", 0.5)
        client.post(s.url("trading-bot") + "/start").raise_for_status()
        time.sleep(seconds)
        client.post(s.url("trading-bot") + "/stop").raise_for_status()
        # The last batches of spans reach the viewer: the services' export interval, then
        # the viewer's commit interval (1 s).
        time.sleep(3)
        found = client.get(
            s.traceview + "/api/traces",
            params={
                "operation": "submit_order",
                # This phase's trades only: the bot traded for `seconds`, then 3 s of drain.
                "lookback": f"{seconds + 4:.0f}s",
                "limit": "1000",
            },
        ).json()
        paths = []
        for summary in found["data"]:
            spans = client.get(f"{s.traceview}/api/traces/{summary['trace_id']}").json()["data"]
            path = tick_path(spans)
            if path is not None:
                paths.append(path)
    if not paths:
        print(
            f"tick -> order ack, {when}: no trade traced in {seconds:.0f} s "
            "(the bot placed no order)"
        )
        return
    report_paths(paths, when)


def report_paths(paths: list[TickPath], when: str) -> None:
    totals = [p.total_ms for p in paths]
    print(
        f"tick -> order ack, {when} ({len(paths)} trades): p50 {pct(totals, 0.5):.1f} ms  "
        f"p99 {pct(totals, 0.99):.1f} ms  (target p50 <= 15, p99 <= 50)"
    )
    print("  by kind (median ms per trade; p99 in brackets):")
    for kind in KINDS:
        values = [p.by_kind().get(kind, 0.0) for p in paths]
        print(f"    {kind:<22} {statistics.median(values):7.2f}  ({pct(values, 0.99):7.2f})")
    print("  by service (median ms per trade; HTTP client time is the caller's):")
    services = sorted({_service_of(stage) for p in paths for stage in p.stages})
    for service in services:
        values = [p.of_service(service) for p in paths]
        print(f"    {service:<22} {statistics.median(values):7.2f}  ({pct(values, 0.99):7.2f})")
    stages: dict[str, list[float]] = defaultdict(list)
    for p in paths:
        for stage, ms in p.stages.items():
            stages[stage].append(ms)
    print("  by stage (median ms over the trades that have it; max):")
    for stage, values in sorted(stages.items(), key=lambda kv: -statistics.median(kv[1])):
        if statistics.median(values) >= 0.05:
            print(f"    {stage:<58} {statistics.median(values):7.2f}  max {max(values):7.2f}")
    inside: dict[str, list[float]] = defaultdict(list)
    for p in paths:
        for name, ms in p.inside.items():
            inside[name].append(ms)
    print("  inside the services: internal spans on the path, SQL included (median ms; max):")
    for name, values in sorted(inside.items(), key=lambda kv: -statistics.median(kv[1])):
        if statistics.median(values) >= 0.05:
            print(f"    {name:<58} {statistics.median(values):7.2f}  max {max(values):7.2f}")


KINDS = ("publish", "stream wait", "in-service", "SQL", "bus publish on path", "HTTP client")
"""What the time from a tick to its order's acknowledgement is spent on:

* publish: the tick's XADD (eventbus-bridge's `send market.tick`, until the bot has it);
* stream wait: from then until the bot's `process market.tick` starts (the consumer's read
  and any handler ahead of it in the batch);
* in-service: inside a service's own spans, less the SQL, bus and HTTP calls it makes;
* SQL: database client spans on the path;
* bus publish on path: producer spans a service waits for before answering;
* HTTP client: a call's client span less the called service's server span (connection,
  serialisation, the client's middleware and the loop's scheduling).

Stages of calls made concurrently overlap, so the kinds can add up to more than the total.
"""


@dataclass
class TickPath:
    """One trade: tick publication to the end of execution's POST /orders, by stage."""

    total_ms: float
    stages: dict[str, float] = field(default_factory=dict)
    inside: dict[str, float] = field(default_factory=dict)
    """Time in the services' own internal spans on the path (their SQL included), by
    "service span name": where an in-service time goes, apart from the stages."""

    def add(self, stage: str, ms: float) -> None:
        if ms > 0:
            self.stages[stage] = self.stages.get(stage, 0.0) + ms

    def of_service(self, service: str) -> float:
        return sum(ms for stage, ms in self.stages.items() if _service_of(stage) == service)

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for stage, ms in self.stages.items():
            out[stage.split(":", 1)[0]] += ms
        return out


def _service_of(stage: str) -> str:
    return stage.split(": ", 1)[1].split(" ", 1)[0]


def tick_path(spans: list[dict[str, Any]]) -> TickPath | None:
    """The tick-to-ack path of a trade's trace, or None if the trace holds no whole trade."""
    by_id = {sp["span_id"]: sp for sp in spans}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sp in spans:
        children[sp["parent_span_id"]].append(sp)
    sends = [sp for sp in spans if sp["kind"] == "producer" and sp["name"] == "send market.tick"]
    consumers = [
        sp
        for sp in spans
        if sp["service"] == "trading-bot"
        and sp["kind"] == "consumer"
        and sp["name"] == "process market.tick"
    ]
    acks = [
        sp
        for sp in spans
        if sp["service"] == "execution"
        and sp["kind"] == "server"
        and sp["name"].startswith("POST /orders")
    ]
    if not sends or not consumers or not acks:
        return None
    send, consumer = sends[0], consumers[0]
    if by_id.get(consumer["parent_span_id"]) is not send:
        return None
    end = min(sp["end_ns"] for sp in acks)
    path = TickPath((end - send["start_ns"]) / 1e6)
    handed = min(send["end_ns"], consumer["start_ns"])
    path.add("publish: eventbus-bridge XADD market.tick", (handed - send["start_ns"]) / 1e6)
    path.add("stream wait: trading-bot", (consumer["start_ns"] - handed) / 1e6)
    _walk(consumer, end, children, path)
    return path


def _clipped_ms(sp: dict[str, Any], end: int) -> float:
    return float(max(0, min(sp["end_ns"], end) - sp["start_ns"]) / 1e6)


def _walk(
    root: dict[str, Any], end: int, children: dict[str, list[dict[str, Any]]], path: TickPath
) -> None:
    """Charge `root`'s time (up to `end`) to its service, less its outgoing calls, which are
    charged to SQL, the bus, the HTTP client and (recursively) the service called."""
    service = root["service"]
    own = _clipped_ms(root, end)
    # What a span starts after its parent ended (say, a publication after the answer) is
    # not on the path.
    end = min(end, root["end_ns"])
    # Calls made concurrently overlap: the service's own time excludes their union, once.
    calls: list[tuple[int, int]] = []
    stack = list(children.get(root["span_id"], []))
    while stack:
        sp = stack.pop()
        if sp["start_ns"] >= end:
            continue
        if sp["kind"] == "client":
            ms = _clipped_ms(sp, end)
            calls.append((sp["start_ns"], min(sp["end_ns"], end)))
            if "db.system" in sp["attributes"] or "db.system.name" in sp["attributes"]:
                path.add(f"SQL: {service} {sp['name']}", ms)
                continue
            servers = [c for c in children.get(sp["span_id"], []) if c["kind"] == "server"]
            if not servers:
                path.add(f"HTTP client: {service} {sp['name']} (no server span)", ms)
                continue
            server = servers[0]
            path.add(
                f"HTTP client: {service} -> {server['service']}", ms - _clipped_ms(server, end)
            )
            _walk(server, end, children, path)
        elif sp["kind"] == "producer":
            ms = _clipped_ms(sp, end)
            calls.append((sp["start_ns"], min(sp["end_ns"], end)))
            path.add(f"bus publish on path: {service} {sp['name']}", ms)
        else:
            if sp["kind"] == "internal":
                key = f"{service} {sp['name']}"
                path.inside[key] = path.inside.get(key, 0.0) + _clipped_ms(sp, end)
            stack.extend(children.get(sp["span_id"], []))
    path.add(f"in-service: {service} {root['name']}", own - _union_ms(calls))


def _union_ms(intervals: list[tuple[int, int]]) -> float:
    """The time covered by at least one of `intervals` (ns, start and end), in ms."""
    covered = 0
    reach = None
    for start, finish in sorted(intervals):
        if finish <= start:
            continue
        if reach is None or start >= reach:
            covered += finish - start
            reach = finish
        elif finish > reach:
            covered += finish - reach
            reach = finish
    return covered / 1e6


# Main ---------------------------------------------------------------------------------------


@contextmanager
def postgres_database() -> Iterator[str]:
    import asyncpg

    name = f"qt_bench_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_one(args: argparse.Namespace, database: str) -> int:
    with (
        contextmanager_for(database) as url,
        stack(args.port_offset, url, 10**8, args.log_level, args.tracing == "on") as s,
    ):
        with httpx.Client(timeout=10, headers=s.headers) as client:
            client.post(s.url("trading-bot") + "/stop").raise_for_status()
            wait_until(
                lambda: any(
                    q["symbol"] == SYMBOL for q in client.get(s.url("execution") + "/quotes").json()
                ),
                60,
                "a quote at execution",
                0.5,
            )
        if args.trace_seconds:
            # First as `make run` has it: a fresh platform, the bot trading on its own.
            tick_to_ack(s, args.trace_seconds, "fresh platform")
        drive(s, 3.0, args.in_flight, args.quantity, f"warm{uuid.uuid4().hex[:6]}", args.clients)
        window = min(5.0, args.seconds)
        with bare_server() as bare:
            client_rps, client_p50, client_p99 = ping(bare, window, args.in_flight, args.clients)
        base_rps, base_p50, base_p99 = ping(
            s.url("execution"), window, args.in_flight, args.clients
        )
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        pids = platform_pids(s.pid)
        cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
        load = drive(s, args.seconds, args.in_flight, args.quantity, prefix, args.clients)
        cpu_used = {n: cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
        rate = len(load.accepted) / load.seconds
        print(
            f"-- {database}, {args.in_flight} in flight, {args.seconds:.0f} s, "
            f"{args.clients} client processes, LOG_LEVEL={args.log_level}, "
            f"{'' if args.tracing == 'on' else 'tracing OFF, '}"
            f"load average {os.getloadavg()[0]:.2f}, "
            f"ticks on {'their own Redis' if 'redis-market' in pids else 'the bus Redis'} --"
        )
        print(
            f"client floor: GET on a bare server:       {client_rps:8.1f} req/s  "
            f"p50 {client_p50:6.1f} ms  p99 {client_p99:6.1f} ms"
        )
        print(
            f"baseline GET /health/live on execution: {base_rps:8.1f} req/s  "
            f"p50 {base_p50:6.1f} ms  "
            f"p99 {base_p99:6.1f} ms"
        )
        print(
            f"orders (check + submit):         {rate:8.1f} /s     "
            f"p50 {pct(load.order_ms, 0.5):6.1f} ms  "
            f"p99 {pct(load.order_ms, 0.99):6.1f} ms  ({rate / base_rps:.3f} of the baseline; "
            f"target >= 500/s, p99 <= 50 ms)"
        )
        print(
            f"  risk POST /check  p50 {pct(load.risk_ms, 0.5):6.1f} ms  "
            f"p99 {pct(load.risk_ms, 0.99):6.1f} ms"
        )
        print(
            f"  execution POST /orders  p50 {pct(load.execution_ms, 0.5):6.1f} ms  "
            f"p99 {pct(load.execution_ms, 0.99):6.1f} ms"
        )
        print("  CPU per order (load-independent): " + _cpu_per_order(cpu_used, load))
        print(
            "  "
            + bounds(
                args.in_flight,
                rate,
                sum(cpu_used.values()) / (len(load.accepted) or 1),
                os.cpu_count() or 1,
                _spread(load.order_ms),
            )
        )
        if load.first_refusal:
            print(f"  first refusal: {load.first_refusal}")
        if load.denied or load.errors:
            print(f"  denied {dict(load.denied)}  errors {dict(load.errors)}")
            for reason, detail in load.denial_example.items():
                print(f"  e.g. {reason}: {detail[:200]}")
        ok = books_match(s, url, load, prefix, "")
        follows, held = monitor_follows(s)
        answer = "yes" if follows else "NO"
        print(f"position-monitor holds the portfolio's {SYMBOL}: {answer} {json.dumps(held)}")
        ok = follows and ok
        if args.open_rate:
            ok = open_loop(s, url, args) and ok
        if args.lone_seconds:
            ok = lone_orders(s, url, pids, args) and ok
        if args.trace_seconds:
            tick_to_ack(s, args.trace_seconds, "after the load")
        return 0 if ok else 1


def bounds(
    in_flight: int, rate: float, cpu_s_per_order: float, cores: int, spread: float = 0.0
) -> str:
    """What the closed loop's figures allow, whatever the code: the mean wait `in_flight`
    orders at `rate` must have (Little's law), the rate a p99 of 50 ms at `in_flight` needs
    (at least the rate of a mean of 50 ms; with the run's `spread`, its p99 over its mean,
    the rate of a mean 50 ms / spread), and the most every core busy with the platform's CPU
    per order could serve."""
    wait_ms = 1000 * in_flight / rate if rate else float("inf")
    ceiling = cores / cpu_s_per_order if cpu_s_per_order else float("inf")
    needs = f"p99 <= 50 ms needs >= {in_flight / 0.05:,.0f} orders/s"
    if spread > 1:
        needs += (
            f" (>= {in_flight * spread / 0.05:,.0f} at this run's spread, "
            f"p99 {spread:.1f}x the mean)"
        )
    return (
        f"bounds: {in_flight} in flight at {rate:.1f}/s wait {wait_ms:.0f} ms on average "
        f"(Little's law), so {needs}; "
        f"{cores} cores at {1000 * cpu_s_per_order:.2f} ms of CPU per order serve at most "
        f"{ceiling:,.0f} orders/s"
    )


def _spread(ms: list[float]) -> float:
    """p99 over the mean: how far the tail sits from the mean Little's law fixes."""
    return pct(ms, 0.99) / statistics.fmean(ms) if ms else 0.0


def _cpu_per_order(cpu_used: dict[str, float], load: Load) -> str:
    """CPU per order of the order path's services (risk-safety's per check), then of every
    other process of the platform and the whole platform's, all per accepted order."""
    checks = len(load.risk_ms) or 1
    orders = len(load.accepted) or 1
    path = "  ".join(
        f"{n} {1000 * cpu_used[n] / (checks if n == 'risk-safety' else orders):.2f} ms"
        + (" per check" if n == "risk-safety" else "")
        for n in ORDER_PATH
        if n in cpu_used
    )
    others = "  ".join(
        f"{n} {1000 * cpu_used[n] / orders:.2f} ms"
        for n in sorted(cpu_used, key=lambda n: (n in PLATFORM_EXTRAS or "child" in n, n))
        if n not in ORDER_PATH
    )
    total = 1000 * sum(cpu_used.values()) / orders
    return f"{path}\n    rest of the platform: {others}\n    whole platform: {total:.2f} ms"


def books_match(s: Stack, url: str | None, load: Load, prefix: str, indent: str) -> bool:
    """Print, and return, whether every order of `load` the client saw accepted is persisted
    by execution and booked once by the portfolio, and nothing else was."""
    counts = reconcile(s, url, load, prefix)
    ok = (
        counts["accepted"] == counts["persisted"] == counts["booked"]
        and counts["persisted_not_accepted"] == 0
        and counts["booked_twice"] == counts["filled_twice"] == 0
    )
    print(f"{indent}accepted = persisted = booked: {'yes' if ok else 'NO'} {json.dumps(counts)}")
    return ok


def open_loop(s: Stack, url: str | None, args: argparse.Namespace) -> bool:
    """Orders offered at a fixed rate whatever the answers (at most `--in-flight` at once),
    each timed from when it was due: the latency at that rate, which a closed loop cannot
    show (there, 64 in flight at N orders/s means 64/N s each by Little's law)."""
    prefix = f"open{uuid.uuid4().hex[:8]}"
    load = drive(
        s, args.seconds, args.in_flight, args.quantity, prefix, args.clients, args.open_rate
    )
    print(
        f"open loop, {args.open_rate:.0f} orders/s offered, at most {args.in_flight} in flight: "
        f"{len(load.accepted) / load.seconds:.1f} /s done  p50 {pct(load.order_ms, 0.5):6.1f} ms  "
        f"p99 {pct(load.order_ms, 0.99):6.1f} ms  (from when each was due)"
    )
    if load.denied or load.errors:
        print(f"  denied {dict(load.denied)}  errors {dict(load.errors)}")
    return books_match(s, url, load, prefix, "  ")


def lone_orders(s: Stack, url: str | None, pids: dict[str, int], args: argparse.Namespace) -> bool:
    """One order at a time (the tick path's shape: nothing to batch with); True if accepted =
    persisted = booked for them too."""
    prefix = f"lone{uuid.uuid4().hex[:8]}"
    # What the services burn with no order (ticks, polls, relays), subtracted below: at a
    # few orders a second it would otherwise dominate the figure.
    idle_s = min(5.0, args.lone_seconds)
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    time.sleep(idle_s)
    idle_rate = {n: (cpu_seconds(p) - cpu_before[n]) / idle_s for n, p in pids.items()}
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    load = drive(s, args.lone_seconds, 1, args.quantity, prefix, 1)
    cpu_used = {
        n: cpu_seconds(p) - cpu_before[n] - idle_rate[n] * load.seconds for n, p in pids.items()
    }
    print(
        f"one order at a time:             {len(load.accepted) / load.seconds:8.1f} /s     "
        f"p50 {pct(load.order_ms, 0.5):6.1f} ms  p99 {pct(load.order_ms, 0.99):6.1f} ms"
    )
    print(
        f"  execution POST /orders  p50 {pct(load.execution_ms, 0.5):6.1f} ms  "
        f"p99 {pct(load.execution_ms, 0.99):6.1f} ms"
    )
    print("  CPU per order, net of the idle rate: " + _cpu_per_order(cpu_used, load))
    return books_match(s, url, load, prefix, "  ")


@contextmanager
def contextmanager_for(database: str) -> Iterator[str | None]:
    if database == "sqlite":
        yield None
    else:
        with postgres_database() as url:
            yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--quantity", default="0.1")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--trace-seconds", type=float, default=20.0)
    parser.add_argument(
        "--lone-seconds",
        type=float,
        default=5.0,
        help="then one order at a time for this long (0: skip)",
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="load-generating processes sharing --in-flight"
    )
    parser.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="then orders offered at this rate (open loop, at most --in-flight at once) for "
        "--seconds (0: skip)",
    )
    parser.add_argument("--port-offset", type=int, default=_default_offset())
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="the services' LOG_LEVEL (INFO: `make run`'s; every order then logs its lines)",
    )
    parser.add_argument(
        "--tracing",
        choices=("on", "off"),
        default="on",
        help="off: the services export no spans (OTEL_SDK_DISABLED); with --log-level WARNING, "
        "the order path's cost without telemetry, the floor telemetry adds to",
    )
    args = parser.parse_args(argv)
    if args.tracing == "off" and args.trace_seconds:
        parser.error("--tracing off leaves no traces to time the trades by: add --trace-seconds 0")
    if not 1 <= args.in_flight <= 500:
        parser.error(f"--in-flight must be between 1 and 500, not {args.in_flight}")
    databases = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    status = 0
    for database in databases:
        status |= run_one(args, database)
    return status


if __name__ == "__main__":
    sys.exit(main())
