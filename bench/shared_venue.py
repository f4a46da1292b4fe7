"""Shared venue: orders per second through one execution process, and through two sharing one
venue (`EXECUTION_SHARED_VENUE`), on the same database.

Each configuration starts real execution processes (a fresh SQLite file, or a fresh PostgreSQL
database with `--postgres`; one Redis; a real HTTP risk-safety stub serving ACTIVE), then
several client threads submit approved marketable buys, spread evenly over the replicas, for
`--seconds`. It prints accepted orders per second per configuration and the ratio to one
replica without sharing. The venue is one, so two replicas take turns on it: the figure shows
what the lock across processes and the catch-up cost, not a speed-up.

    python -m bench.shared_venue --seconds 10 --threads 8
    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        python -m bench.shared_venue --postgres
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.support.factories import market_tick
from tests.support.halting import CALM, approved_order, publish_ticks
from tests.support.polling import wait_until
from tests.support.postgres import scratch_databases
from tests.support.procs import free_port, running
from tests.support.redis import delete_prefixed, new_prefix, redis_server
from tests.support.riskstub import RiskStub

TOKEN = "bench-shared-venue"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CONFIGURATIONS = (("1 replica", 1, False), ("1 replica, shared", 1, True), ("2 replicas", 2, True))


def answers(port: int, path: str, check: Callable[[Any], bool]) -> bool:
    return check(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json())


def open_(state: Any) -> bool:
    return bool(state["accepts"] == "ALL")


def quoted(quotes: Any) -> bool:
    return bool(quotes)


@contextmanager
def replicas(
    count: int, shared: bool, database_url: str, redis_url: str, tmp: Path, risk_url: str
) -> Iterator[list[int]]:
    """`count` execution processes on one database and one bus prefix; their ports."""
    prefix = new_prefix()
    env = {
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": prefix,
        "DATABASE_URL": database_url,
        "QT_API_TOKEN": TOKEN,
        "EXECUTION_SHARED_VENUE": "1" if shared else "0",
        "RISK_SAFETY_URL": risk_url,
        "EXECUTION_RISK_LEASE_MS": "60000",
        "INITIAL_CASH": "100000000",
        "OTLP_ENDPOINT": "",
        "OTEL_SDK_DISABLED": "true",
        "LOG_LEVEL": "WARNING",
    }
    ports = [free_port() for _ in range(count)]
    try:
        with ExitStack() as stack:
            for n, port in enumerate(ports):
                stack.enter_context(
                    running(
                        ["-m", "quantum_trader", "serve", "execution"],
                        {**env, "PORT": str(port), "EVENTBUS_CONSUMER_NAME": f"bench-{n}"},
                        tmp / f"execution-{n}.log",
                        port,
                        "/health/ready",
                        120,
                    )
                )
            for port in ports:
                wait_until(partial(answers, port, "/risk/state", open_), 60, "the ACTIVE state")
            publish_ticks(redis_url, prefix, market_tick(*CALM))
            for port in ports:
                wait_until(partial(answers, port, "/quotes", quoted), 30, "the first quote")
            yield ports
    finally:
        delete_prefixed(redis_url, prefix)


def load(ports: list[int], threads: int, seconds: float) -> tuple[int, int]:
    """Accepted orders and refusals/errors after `seconds` of `threads` clients."""
    ids = itertools.count()
    accepted, failed = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        port = ports[n % len(ports)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=60) as c:
            while time.monotonic() < deadline:
                body = approved_order(f"b{next(ids)}", side="BUY", quantity="0.1", epoch=0)
                ok = c.post("/orders", json=body).status_code == 201
                with lock:
                    accepted[0] += ok
                    failed[0] += not ok

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return accepted[0], failed[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL database each")
    args = parser.parse_args(argv)
    risk = RiskStub()
    rates: dict[str, float] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-shared-")))
        redis_url = stack.enter_context(redis_server(tmp))
        if args.postgres:
            urls = stack.enter_context(scratch_databases(len(CONFIGURATIONS), "qt_bench"))
        else:
            urls = [f"sqlite+aiosqlite:///{tmp / f'db-{n}.db'}" for n in range(len(CONFIGURATIONS))]
        print(f"{'configuration':<20} {'orders':>7} {'failed':>7} {'orders/s':>9} {'ratio':>6}")
        for (name, count, shared), url in zip(CONFIGURATIONS, urls, strict=True):
            with replicas(count, shared, url, redis_url, tmp, risk.url) as ports:
                accepted, failed = load(ports, args.threads, args.seconds)
            rates[name] = accepted / args.seconds
            ratio = rates[name] / rates[CONFIGURATIONS[0][0]] if rates[CONFIGURATIONS[0][0]] else 0
            print(f"{name:<20} {accepted:>7} {failed:>7} {rates[name]:>9.1f} {ratio:>6.2f}")
    risk.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
