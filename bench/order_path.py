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


def tick_to_ack(s: Stack, seconds: float) -> None:
    """Let the bot trade for `seconds`; the traces' tick-to-ack time and where it goes."""
    with httpx.Client(timeout=10, headers=s.headers) as client:
        client.post(s.url("trading-bot") + "/start").raise_for_status()
        time.sleep(seconds)
        client.post(s.url("trading-bot") + "/stop").raise_for_status()
        time.sleep(2)  # the last batches of spans reach the viewer
        found = client.get(s.traceview + "/api/traces", params={"q": "submit_order"}).json()
        totals: list[float] = []
        stages: dict[str, list[float]] = defaultdict(list)
        for summary in found["data"]:
            spans = client.get(f"{s.traceview}/api/traces/{summary['trace_id']}").json()["data"]
            breakdown = _breakdown(spans)
            if breakdown is None:
                continue
            total, parts = breakdown
            totals.append(total)
            for name, ms in parts.items():
                stages[name].append(ms)
    if not totals:
        print(f"tick -> order ack: no trade traced in {seconds:.0f} s (the bot placed no order)")
        return
    print(
        f"tick -> order ack ({len(totals)} trades): p50 {pct(totals, 0.5):.1f} ms  "
        f"p99 {pct(totals, 0.99):.1f} ms  (target p50 <= 15, p99 <= 50)"
    )
    for name, values in sorted(stages.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {name:<58} median {statistics.median(values):7.2f} ms  max {max(values):7.2f}")


def _breakdown(spans: list[dict[str, Any]]) -> tuple[float, dict[str, float]] | None:
    """Tick publication to the end of execution's POST /orders, and the spans on the way."""
    ack = [
        sp
        for sp in spans
        if sp["service"] == "execution"
        and sp["kind"] == "server"
        and sp["name"].startswith("POST /orders")
    ]
    if not ack or not any(sp["service"] == "trading-bot" for sp in spans):
        return None
    start = min(sp["start_ns"] for sp in spans)
    end = min(sp["end_ns"] for sp in ack)
    parts: dict[str, float] = {}
    for sp in spans:
        if sp["start_ns"] > end:
            continue
        wanted = sp["kind"] in ("server", "consumer", "producer") or sp["service"] in (
            "trading-bot",
            "risk-safety",
            "execution",
        )
        if wanted:
            key = f"{sp['service']}: {sp['name']} ({sp['kind']})"
            # Only the part before the acknowledgement counts.
            ms = (min(sp["end_ns"], end) - sp["start_ns"]) / 1e6
            parts[key] = parts.get(key, 0.0) + ms
    return (end - start) / 1e6, parts


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
