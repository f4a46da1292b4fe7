"""The embedded Redis, `resolve_redis_url`, and the bus running without OpenTelemetry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import redis

from backend.infra.eventbus import EmbeddedRedis, resolve_redis_url
from backend.infra.eventbus._embedded import _stop_owned

ROOT = Path(__file__).resolve().parents[3]


def test_redis_url_wins_over_the_embedded_server(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://db.internal:6380/2", "EMBEDDED_REDIS_DIR": str(tmp_path)}
    assert resolve_redis_url(env) == "redis://db.internal:6380/2"
    assert not any(tmp_path.iterdir())


def test_embedded_server_persists_with_aof_and_is_attached_to_by_a_second_caller(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "redis"
    url = resolve_redis_url({"EMBEDDED_REDIS_DIR": str(data_dir)})
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("k", "v")
        client.close()
        # Another process resolving the same directory reuses the running server.
        code = (
            "from backend.infra.eventbus import resolve_redis_url; "
            f"print(resolve_redis_url({{'EMBEDDED_REDIS_DIR': {str(data_dir)!r}}}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=30,
        )
        assert out.stdout.strip() == url
    finally:
        _stop_owned()
    # A restart on the same directory replays the append-only file.
    with EmbeddedRedis(data_dir) as server:
        assert redis.Redis.from_url(server.url).get("k") == b"v"


def test_the_bus_publishes_and_consumes_without_opentelemetry(redis_url: str, prefix: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the package were not installed
        import asyncio
        from backend.infra.eventbus import (
            EventBusSettings, EventConsumer, EventPublisher, create_redis_client)
        from backend.trading.events import OrderFilled
        from tests.infra.eventbus.worker import fill

        async def main():
            client = create_redis_client({redis_url!r})
            settings = EventBusSettings(prefix={prefix!r}, block_ms=100)
            await EventPublisher(client, "x", settings).publish(fill(1))
            got = asyncio.Event()
            consumer = EventConsumer(client, "g", settings)
            async def handler(event):
                assert event.traceparent is None
                got.set()
            consumer.subscribe(OrderFilled, handler)
            async with consumer:
                await asyncio.wait_for(got.wait(), 10)
            await client.aclose()
            import backend.infra.observability._otel as otel
            assert not otel.HAS_API
            print("ok")

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
