"""The event bus on a real Redis Cluster: three primaries started from `redis-server`."""

from __future__ import annotations

import dataclasses
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from backend.infra.eventbus import (
    Event,
    EventBusConfigError,
    EventBusSettings,
    EventConsumer,
    EventPublisher,
    Idempotency,
    create_redis_client,
)
from backend.trading.events import MarketTick, OrderFilled
from tests.support.require import require_service

from .support import eventually
from .worker import fill


def _free_cluster_port() -> int:
    """A port free for the server and for its cluster bus (port + 10000)."""
    for _ in range(100):
        port = random.randrange(20_000, 22_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free pair of ports for a cluster node")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis+cluster://` URL of three primaries (no replicas), stopped and removed afterwards."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    require_service(bool(server and cli), "redis-server and redis-cli are needed for a cluster")
    assert server and cli
    root = tmp_path_factory.mktemp("cluster")
    nodes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(3):
            port = _free_cluster_port()
            data = root / f"node{i}"
            data.mkdir()
            nodes.append(
                subprocess.Popen(
                    [
                        server,
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(data / "nodes.conf"),
                        "--dir",
                        str(data),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(data / "redis.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        for port in ports:
            _wait_ping(cli, port)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_cluster_ok(cli, ports)
        yield f"redis+cluster://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ping(cli: str, port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, check=False)
        if done.stdout.strip() == b"PONG":
            return
        time.sleep(0.1)
    raise AssertionError(f"cluster node on {port} did not answer PING")


def _wait_cluster_ok(cli: str, ports: list[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                [cli, "-p", str(p), "cluster", "info"], capture_output=True, check=False
            ).stdout
            for p in ports
        ]
        if all(b"cluster_state:ok" in s for s in states):
            return
        time.sleep(0.2)
    raise AssertionError("the cluster did not reach cluster_state:ok")


@pytest.fixture
async def cluster(cluster_url: str) -> Any:
    client = create_redis_client(cluster_url)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def tagged(settings: EventBusSettings) -> EventBusSettings:
    """This test's settings with its prefix as a hash tag: `{prefix}`."""
    return dataclasses.replace(settings, prefix="{" + settings.prefix + "}")


def _tick(n: int) -> MarketTick:
    return MarketTick.model_validate(
        {
            "symbol": "BTCUSDT",
            "bid": str(100 + n),
            "ask": str(101 + n),
            "last": str(100 + n),
            "volume": "1",
            "ts_ms": 1_700_000_000_000 + n,
        }
    )


async def test_batched_publish_over_several_streams_is_consumed_once_on_a_cluster(
    cluster: Redis, tagged: EventBusSettings
) -> None:
    nodes = cluster.get_nodes()  # type: ignore[attr-defined]
    assert len(nodes) == 3
    publisher = EventPublisher(cluster, "execution", tagged)
    consumer = EventConsumer(
        cluster,
        "portfolio",
        tagged,
        consumer_name="c1",
        idempotency=Idempotency(cluster, scope="portfolio", settings=tagged),
    )
    fills: list[str] = []
    ticks: list[str] = []

    async def on_fill(event: Event[OrderFilled]) -> None:
        fills.append(event.data.fill_id)

    async def on_tick(event: Event[MarketTick]) -> None:
        ticks.append(event.id)

    consumer.subscribe(OrderFilled, on_fill)
    consumer.subscribe(MarketTick, on_tick)
    await consumer.ensure_groups()
    # One call, interleaved types: two streams in each pipelined round trip.
    items = [fill(i) if i % 2 else _tick(i) for i in range(1, 201)]
    receipts = await publisher.publish_many(items)
    assert {r.stream for r in receipts} == {"order.filled", "market.tick"}
    async with consumer:
        await eventually(lambda: len(fills) == 100 and len(ticks) == 100, what="200 events")
        fill_key, tick_key = tagged.stream_key("order.filled"), tagged.stream_key("market.tick")

        async def acknowledged() -> bool:
            pending = [await cluster.xpending(k, "portfolio") for k in (fill_key, tick_key)]
            return all(int(p["pending"]) == 0 for p in pending)

        await eventually(acknowledged, what="every entry acknowledged")
        # Trimming works there too: everything but the last delivered entry goes.
        await consumer.trim_streams()
        assert await cluster.xlen(fill_key) == 1 and await cluster.xlen(tick_key) == 1
    assert sorted(fills) == sorted(fill(i).fill_id for i in range(1, 201, 2))
    assert len(set(ticks)) == 100
    # Every key of the bus is in one slot, which is what makes the above possible.
    slots = {RedisCluster.keyslot(cluster, k) for k in (fill_key, tick_key)}  # type: ignore[arg-type]
    assert len(slots) == 1


async def test_without_a_hash_tag_a_read_over_several_streams_fails_on_a_cluster(
    cluster: Redis, settings: EventBusSettings
) -> None:
    # What docs/EVENTBUS.md says is not supported: the plain prefix spreads the streams over
    # slots, and one XREADGROUP over several of them is refused (CROSSSLOT).
    keys = [settings.stream_key(s) for s in ("order.filled", "market.tick")]
    assert len({RedisCluster.keyslot(cluster, k) for k in keys}) == 2  # type: ignore[arg-type]
    for key in keys:
        await cluster.xgroup_create(key, "g", "0", mkstream=True)
    with pytest.raises(Exception, match=r"(?i)slot"):
        await cluster.xreadgroup("g", "c", dict.fromkeys(keys, ">"), count=1)
    for key in keys:
        await cluster.delete(key)


def test_a_hash_tag_prefix_is_accepted_and_a_malformed_one_is_not() -> None:
    assert EventBusSettings(prefix="{qt}").stream_key("order.filled") == "{qt}:events:order.filled"
    for bad in ("{qt", "{}", "{q t}", "{{qt}}"):
        with pytest.raises(EventBusConfigError, match="hash tag"):
            EventBusSettings(prefix=bad)


async def test_acknowledgements_sent_with_the_next_read_work_on_a_cluster(
    cluster: Redis, tagged: EventBusSettings
) -> None:
    """Ticks read without marks leave acknowledgements alone, which go out in one pipeline
    with the next XREADGROUP: on a cluster too, every entry ends up acknowledged."""
    publisher = EventPublisher(cluster, "bridge", tagged)
    consumer = EventConsumer(
        cluster,
        "quotes",
        tagged,
        consumer_name="c1",
        idempotency=Idempotency(cluster, scope="quotes", settings=tagged),
    )
    ticks: list[str] = []

    async def on_tick(event: Event[MarketTick]) -> None:
        ticks.append(event.id)

    consumer.subscribe(MarketTick, on_tick, deduplicate=False)
    tick_key = tagged.stream_key("market.tick")
    async with consumer:
        for n in range(1, 4):
            await publisher.publish(_tick(n))
            await eventually(lambda n=n: len(ticks) == n, what=f"tick {n}")

        async def acknowledged() -> bool:
            return int((await cluster.xpending(tick_key, "quotes"))["pending"]) == 0

        await eventually(acknowledged, what="every tick acknowledged")
