"""The order path: orders through risk-safety then execution, on the whole system.

Starts `quantum-trader run` (every built service, the embedded Redis and the trace viewer, full
tracing on) in a private var directory, stops the trading bot, and drives a closed-loop load:
at most `--in-flight` orders at once, each one POST /check at risk-safety then POST /orders at
execution with the approval: a MARKET BUY of `--quantity` SOLUSDT, then its SELL, per worker.
It prints orders/s and the latency of each hop, then checks that every order the client saw
accepted is persisted by execution and booked (once) in the portfolio's ledger: accepted =
persisted = booked.

The baseline, taken in the same run against the same processes, is the bare HTTP round trip
(GET /ping on execution at the same concurrency): the floor an order cannot go below.

With `--trace-seconds S` the bot is then started again for S seconds, and the exported traces
give the tick-to-acknowledgement time (the tick's publication to the end of execution's
POST /orders) with a per-stage breakdown.

    python -m bench.order_path                          # SQLite, 64 in flight, 20 s
    python -m bench.order_path --database postgres      # a private PostgreSQL database
    python -m bench.order_path --in-flight 200 --seconds 30 --trace-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._proc import spawn, stop
from tests.support.polling import wait_until

SYMBOL = "SOLUSDT"
SERVICES = {
    "execution": 8002,
    "risk-safety": 8003,
    "portfolio-intelligence": 8004,
    "trading-bot": 8006,
}
TRACEVIEW_PORT = 16686
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


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _default_offset() -> int:
    return int(os.environ.get("BENCH_PORT_OFFSET", os.environ.get("RUN_PORT_OFFSET", "900")))


class Stack:
    """A running `quantum-trader run` and how to reach it."""

    def __init__(self, var: Path, offset: int, token: str) -> None:
        self.var = var
        self.offset = offset
        self.headers = {"Authorization": f"Bearer {token}"}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{SERVICES[service] + self.offset}"

    @property
    def traceview(self) -> str:
        return f"http://127.0.0.1:{TRACEVIEW_PORT + self.offset}"


@contextmanager
def stack(offset: int, database_url: str | None, risk_max_orders: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="bench-order-path-") as tmp:
        var = Path(tmp) / "var"
        token = secrets.token_urlsafe(24)
        env = {
            "RUN_VAR_DIR": str(var),
            "RUN_PORT_OFFSET": str(offset),
            "RUN_METRICS_PORT": "0",
            "QT_API_TOKEN": token,
            "RISK_MAX_ORDERS": str(risk_max_orders),
            **BOT_TRADING_ENV,
            "LOG_LEVEL": "WARNING",
        }
        if database_url:
            env["DATABASE_URL"] = database_url
        log = open(Path(tmp) / "run.out", "wb")  # noqa: SIM115 - closed below
        proc = spawn(["-m", "quantum_trader", "run"], env=env, stdout=log.fileno())
        try:
            s = Stack(var, offset, token)
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


async def drive(s: Stack, seconds: float, in_flight: int, quantity: str, prefix: str) -> Load:
    load = Load()
    limits = httpx.Limits(
        max_connections=2 * in_flight + 4, max_keepalive_connections=2 * in_flight
    )
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=s.headers) as client:
        quotes = (await client.get(s.url("execution") + "/quotes")).json()
        price = next(q["ask"] for q in quotes if q["symbol"] == SYMBOL)
        counter = iter(range(10**9))
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            # Each worker buys, then sells what it bought: the position stays bounded whatever
            # the rate, so no exposure limit ends the run.
            side = "SELL"
            while time.perf_counter() < stop_at:
                cid = f"{prefix}-{next(counter)}"
                side = "BUY" if side == "SELL" else "SELL"
                order = {
                    "client_order_id": cid,
                    "symbol": SYMBOL,
                    "side": side,
                    "reduce_only": side == "SELL",
                }
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        s.url("risk-safety") + "/check",
                        json={**order, "quantity": quantity, "price": price},
                    )
                    t1 = time.perf_counter()
                    if r.status_code != 200:
                        load.errors[f"check {r.status_code}"] += 1
                        continue
                    verdict = r.json()
                    load.risk_ms.append((t1 - t0) * 1000)
                    if not verdict["approved"]:
                        load.denied[verdict["reason"]] += 1
                        side = "SELL"  # buy again
                        continue
                    r = await client.post(
                        s.url("execution") + "/orders",
                        json={**order, "quantity": quantity, "approval": verdict["approval"]},
                    )
                    t2 = time.perf_counter()
                except httpx.HTTPError as exc:
                    load.errors[type(exc).__name__] += 1
                    side = "SELL"
                    continue
                if r.status_code not in (200, 201):
                    side = "SELL"
                    if not load.errors:
                        print(f"  first refusal: {r.status_code} {r.text[:300]}", flush=True)
                    load.errors[f"orders {r.status_code}"] += 1
                    continue
                load.accepted.add(cid)
                load.execution_ms.append((t2 - t1) * 1000)
                load.order_ms.append((t2 - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        load.seconds = time.perf_counter() - started
    return load


async def ping(url: str, seconds: float, in_flight: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 ms of GET /ping: the HTTP floor."""
    lat: list[float] = []
    limits = httpx.Limits(max_connections=in_flight + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await client.get(url + "/ping")
                lat.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    return len(lat) / elapsed, pct(lat, 0.5), pct(lat, 0.99)


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


def tick_to_ack(s: Stack, seconds: float) -> None:
    """Let the bot trade for `seconds`; the traces' tick-to-ack time and where it goes."""
    with httpx.Client(timeout=30, headers=s.headers) as client:
        client.post(s.url("trading-bot") + "/start").raise_for_status()
        time.sleep(seconds)
        client.post(s.url("trading-bot") + "/stop").raise_for_status()
        time.sleep(2)  # the last batches of spans reach the viewer
        found = client.get(
            s.traceview + "/api/traces",
            params={
                "operation": "submit_order",
                "lookback": f"{seconds + 10:.0f}s",
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
        print(f"tick -> order ack: no trade traced in {seconds:.0f} s (the bot placed no order)")
        return
    report_paths(paths)


def report_paths(paths: list[TickPath]) -> None:
    totals = [p.total_ms for p in paths]
    print(
        f"tick -> order ack ({len(paths)} trades): p50 {pct(totals, 0.5):.1f} ms  "
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
    stack = list(children.get(root["span_id"], []))
    while stack:
        sp = stack.pop()
        if sp["start_ns"] >= end:
            continue
        if sp["kind"] == "client":
            ms = _clipped_ms(sp, end)
            own -= ms
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
            own -= ms
            path.add(f"bus publish on path: {service} {sp['name']}", ms)
        else:
            stack.extend(children.get(sp["span_id"], []))
    path.add(f"in-service: {service} {root['name']}", own)


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
    with contextmanager_for(database) as url, stack(args.port_offset, url, 10**8) as s:
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
        asyncio.run(drive(s, 3.0, args.in_flight, args.quantity, f"warm{uuid.uuid4().hex[:6]}"))
        base_rps, base_p50, base_p99 = asyncio.run(
            ping(s.url("execution"), min(5.0, args.seconds), args.in_flight)
        )
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        load = asyncio.run(drive(s, args.seconds, args.in_flight, args.quantity, prefix))
        rate = len(load.accepted) / load.seconds
        print(f"-- {database}, {args.in_flight} in flight, {args.seconds:.0f} s --")
        print(
            f"baseline GET /ping on execution: {base_rps:8.1f} req/s  p50 {base_p50:6.1f} ms  "
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
        if load.denied or load.errors:
            print(f"  denied {dict(load.denied)}  errors {dict(load.errors)}")
        counts = reconcile(s, url, load, prefix)
        ok = (
            counts["accepted"] == counts["persisted"] == counts["booked"]
            and counts["persisted_not_accepted"] == 0
            and counts["booked_twice"] == counts["filled_twice"] == 0
        )
        print(f"accepted = persisted = booked: {'yes' if ok else 'NO'} {json.dumps(counts)}")
        if args.trace_seconds:
            tick_to_ack(s, args.trace_seconds)
        return 0 if ok else 1


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
    parser.add_argument("--port-offset", type=int, default=_default_offset())
    args = parser.parse_args(argv)
    if not 1 <= args.in_flight <= 500:
        parser.error(f"--in-flight must be between 1 and 500, not {args.in_flight}")
    databases = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    status = 0
    for database in databases:
        status |= run_one(args, database)
    return status


if __name__ == "__main__":
    sys.exit(main())
