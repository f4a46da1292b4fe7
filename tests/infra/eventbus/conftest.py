"""Fixtures for the event bus tests: a real Redis, a unique key prefix per test, clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from backend.infra.eventbus import (
    EmbeddedRedis,
    EventBusSettings,
    create_redis_client,
)
from backend.infra.eventbus._embedded import ping
from tests.conftest import require_service


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`TEST_REDIS_URL` when set and reachable (CI), else an embedded server for the session."""
    url = os.environ.get("TEST_REDIS_URL", "").strip()
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            require_service(False, f"TEST_REDIS_URL={url} is unreachable: {exc}")
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except Exception as exc:  # the embedded server is the fallback; say why it is missing
        require_service(False, f"cannot start the embedded Redis: {exc}")
    assert ping(server.host, server.port)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys (and only they) are deleted afterwards."""
    name = f"qt-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def settings(prefix: str) -> EventBusSettings:
    """Settings with this test's prefix and short timings so failures surface fast."""
    return EventBusSettings(
        prefix=prefix,
        block_ms=100,
        retry_backoff_ms=10,
        retry_backoff_max_ms=100,
        claim_idle_ms=1_000,
        claim_interval_ms=200,
        reconnect_timeout_s=10.0,
        metrics_interval_s=0.2,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[object]:
    """An asyncio redis client (bytes replies) for this test."""
    c = create_redis_client(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]
