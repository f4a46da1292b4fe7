"""Two portfolio-intelligence processes in one consumer group and one database.

Each replica books part of `order.filled`; together they book every fill exactly once, each
booking on top of every fill booked before it (the booking lock), and each answers
`/portfolio` with the whole book (it applies what the other booked first), equal to a
recomputation from the published fills; the equity curve gets one point per interval, not
one per replica. On SQLite (one file, two processes) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import httpx
import orjson
import redis

from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.trading.events import OrderFilled
from tests.support.factories import fill_event
from tests.support.polling import wait_until
from tests.support.procs import free_port, running

INITIAL_CASH = Decimal(100_000)
TOKEN = "replica-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def fills() -> list[OrderFilled]:
    """Two symbols, buys and sells, each fill with the venue's next sequence."""
    out = []
    for n in range(1, 121):
        symbol = "BTCUSDT" if n % 2 else "ETHUSDT"
        side = "SELL" if n % 5 == 0 else "BUY"
        price = f"{100 + n % 7}.5"
        out.append(fill_event(f"r{n}-1", side, "0.5", price, "0.01", symbol=symbol, sequence=n))
    return out


def recomputed(published: list[OrderFilled]) -> tuple[Decimal, dict[str, Decimal]]:
    """Cash and quantity per symbol, by plain arithmetic over the fills."""
    cash, quantity = INITIAL_CASH, defaultdict(lambda: Decimal(0))
    for f in published:
        signed = f.quantity if f.side == "BUY" else -f.quantity
        cash -= signed * f.price + f.fee
        quantity[f.symbol] += signed
    return cash, dict(quantity)


async def publish(redis_url: str, prefix: str, events: list[OrderFilled]) -> None:
    client = create_redis_client(redis_url)
    try:
        publisher = EventPublisher(client, "execution", EventBusSettings(prefix=prefix))
        for start in range(0, len(events), 10):
            await publisher.publish_many(events[start : start + 10])
            await asyncio.sleep(0.02)  # a stream that arrives over time, read by both
    finally:
        await client.aclose()


def booked_by(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("portfolio_fills_booked_total{")
    )


def test_two_replicas_book_every_fill_once_and_both_read_the_whole_book(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    published = fills()
    ports = [free_port(), free_port()]
    env = {
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": prefix,
        "DATABASE_URL": database_url,
        "QT_API_TOKEN": TOKEN,
        "PORTFOLIO_SHARED_LEDGER": "1",
        "INITIAL_CASH": str(INITIAL_CASH),
        "EVENTBUS_BATCH_SIZE": "4",  # small reads, so both replicas get a share
        "EQUITY_SAMPLE_S": "0.4",
        "OTLP_ENDPOINT": "",
        "OTEL_SDK_DISABLED": "true",
    }
    args = ["-m", "quantum_trader", "serve", "portfolio-intelligence"]
    with (
        running(
            args,
            {**env, "PORT": str(ports[0]), "EVENTBUS_CONSUMER_NAME": "replica-1"},
            tmp_path / "replica-1.log",
            ports[0],
            "/health/ready",
            90,
        ) as first,
        running(
            args,
            {**env, "PORT": str(ports[1]), "EVENTBUS_CONSUMER_NAME": "replica-2"},
            tmp_path / "replica-2.log",
            ports[1],
            "/health/ready",
            90,
        ) as second,
    ):
        asyncio.run(publish(redis_url, prefix, published))

        def ledger() -> list[str]:
            response = httpx.get(
                f"http://127.0.0.1:{ports[0]}/fills?limit=1000", headers=HEADERS, timeout=5
            )
            return [f["fill_id"] for f in response.json()["data"]]

        wait_until(lambda: len(ledger()) >= len(published), 60, "every fill in the ledger")
        ids = ledger()
        assert sorted(ids) == sorted(f.fill_id for f in published), "each fill once"
        shares = [booked_by(port) for port in ports]
        assert sum(shares) == len(published) and min(shares) > 0, shares

        cash, quantity = recomputed(published)
        for port in ports:
            book = httpx.get(
                f"http://127.0.0.1:{port}/portfolio", headers=HEADERS, timeout=5
            ).json()
            assert Decimal(book["cash"]) == cash, (port, book["cash"], cash)
            held = {p["symbol"]: Decimal(p["quantity"]) for p in book["positions"]}
            assert held == quantity, (port, held, quantity)
            assert book["fills"]["gaps"] == []

        # One position update per booked fill. Each replica's outbox relay may publish a
        # row the other one is publishing too (at least once): copies share the event id,
        # which consumers skip.
        stream = EventBusSettings(prefix=prefix).stream_key("position.updated")
        client = redis.Redis.from_url(redis_url)

        def updates() -> dict[str, str]:
            envelopes = [orjson.loads(f[b"event"]) for _id, f in client.xrange(stream)]
            return {e["id"]: e["data"]["client_order_id"] for e in envelopes}

        try:
            wait_until(lambda: len(updates()) >= len(published), 30, "every position update")
            announced = sorted(updates().values())
            assert announced == sorted(f.client_order_id for f in published)
        finally:
            client.close()

        # One equity point per interval, not one per replica.
        def curve() -> list[int]:
            points = httpx.get(
                f"http://127.0.0.1:{ports[1]}/equity-curve?limit=1000", headers=HEADERS, timeout=5
            ).json()["data"]
            return [point["ts_ms"] for point in points]

        times = wait_until(lambda: len(t := curve()) >= 5 and t, 30, "5 equity points")
        assert min(b - a for a, b in pairwise(times)) >= 200, times
        for proc in (first, second):
            assert "Traceback" not in proc.output(), proc.output()[-3000:]
