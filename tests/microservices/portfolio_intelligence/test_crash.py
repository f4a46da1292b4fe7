"""portfolio-intelligence SIGKILLed after a batch of fills committed and before it was acked.

A Redis of the test's own, where the service's user may do everything but XACK: the fills are
read, booked in one transaction, and stay pending. The process is killed there for real; once
XACK is allowed again, a restart books nothing twice and loses nothing, and the books equal a
recomputation from the ledger.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis

from backend.infra.eventbus import EmbeddedRedis, EventBusSettings, EventPublisher
from backend.infra.eventbus import create_redis_client as create_async_client
from tests.support.factories import fill_event
from tests.support.polling import wait_until
from tests.support.procs import free_port, running

INITIAL_CASH = Decimal(100_000)
TOKEN = "crash-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
USER, PASSWORD = "portfolio", "crash-test-password"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test alone: its users are changed, and the shared one is left alone."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ledger(port: int) -> list[dict[str, str]]:
    response = httpx.get(f"http://127.0.0.1:{port}/fills?limit=1000", headers=HEADERS, timeout=5)
    return list(response.json()["data"])


def recomputed(fills: list[dict[str, str]]) -> tuple[Decimal, dict[str, Decimal]]:
    """Cash and quantity per symbol from the ledger's rows, by plain arithmetic."""
    cash, quantity = INITIAL_CASH, defaultdict(lambda: Decimal(0))
    for f in fills:
        signed = Decimal(f["quantity"]) * (1 if f["side"] == "BUY" else -1)
        cash -= signed * Decimal(f["price"]) + Decimal(f["fee"])
        quantity[f["symbol"]] += signed
    return cash, {s: q for s, q in quantity.items()}


def test_a_kill_between_the_commit_and_the_ack_books_nothing_twice_and_loses_nothing(
    own_redis: EmbeddedRedis, prefix: str, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command(
        "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "-xack"
    )
    url = own_redis.url.replace("redis://", f"redis://{USER}:{PASSWORD}@")
    published = [
        fill_event(
            f"k{n}-1",
            "SELL" if n % 4 == 0 else "BUY",
            "0.5",
            f"{100 + n % 3}.25",
            "0.01",
            symbol="BTCUSDT" if n % 2 else "ETHUSDT",
            sequence=n,
        )
        for n in range(1, 25)
    ]
    port = free_port()
    env = {
        "REDIS_URL": url,
        "EVENTBUS_PREFIX": prefix,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'portfolio.db'}",
        "QT_API_TOKEN": TOKEN,
        "INITIAL_CASH": str(INITIAL_CASH),
        "EVENTBUS_CONSUMER_NAME": "portfolio-0",
        "PORT": str(port),
        "OTLP_ENDPOINT": "",
        "OTEL_SDK_DISABLED": "true",
    }
    args = ["-m", "quantum_trader", "serve", "portfolio-intelligence"]
    settings = EventBusSettings(prefix=prefix)
    key = settings.stream_key("order.filled")
    with running(args, env, tmp_path / "first.log", port, "/health/ready", 90) as first:

        async def publish() -> None:
            client = create_async_client(own_redis.url)
            try:
                await EventPublisher(client, "execution", settings).publish_many(published)
            finally:
                await client.aclose()

        asyncio.run(publish())
        # Booked (committed) and never acknowledged: the moment to die.
        wait_until(lambda: len(ledger(port)) == len(published), 60, "the batch committed")
        assert int(admin.xpending(key, "portfolio-intelligence")["pending"]) == len(published)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)

    admin.execute_command("ACL", "SETUSER", USER, "+xack")
    with running(args, env, tmp_path / "second.log", port, "/health/ready", 90) as second:
        wait_until(
            lambda: int(admin.xpending(key, "portfolio-intelligence")["pending"]) == 0,
            60,
            "the redelivered fills acknowledged",
        )
        rows = ledger(port)
        copies = Counter(f["fill_id"] for f in rows)
        assert sorted(copies) == sorted(f.fill_id for f in published), "nothing lost"
        assert set(copies.values()) == {1}, "nothing booked twice"
        book = httpx.get(f"http://127.0.0.1:{port}/portfolio", headers=HEADERS, timeout=5).json()
        cash, quantity = recomputed(rows)
        assert Decimal(book["cash"]) == cash
        assert {p["symbol"]: Decimal(p["quantity"]) for p in book["positions"]} == quantity
        assert admin.xlen(settings.dead_letter_key("order.filled")) == 0
        assert "Traceback" not in second.output(), second.output()[-3000:]
    admin.close()
