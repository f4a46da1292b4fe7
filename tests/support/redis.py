"""A real Redis for tests: `TEST_REDIS_URL` when set (CI), else an embedded server.

The pytest fixtures over it (`redis_url`, `prefix`) are in `tests.support.plugin`; `redis_server`
is for code that runs outside pytest (the benchmarks).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from backend.infra.eventbus import EmbeddedRedis


class RedisUnavailable(Exception):
    """Neither `TEST_REDIS_URL` answers nor an embedded server starts."""


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """The URL of a Redis that answers PING: `TEST_REDIS_URL`'s, or one started in `tmp`."""
    url = os.environ.get("TEST_REDIS_URL", "").strip()
    if url:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"TEST_REDIS_URL={url} is unreachable: {exc}") from exc
        finally:
            client.close()
        yield url
        return
    server = EmbeddedRedis(tmp / "redis")
    try:
        server.start()
    except Exception as exc:  # the embedded server is the fallback; say why it is missing
        raise RedisUnavailable(f"cannot start the embedded Redis: {exc}") from exc
    try:
        yield server.url
    finally:
        server.stop()


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"qt-test-{uuid.uuid4().hex[:12]}"


def delete_prefixed(url: str, prefix: str) -> None:
    """Delete the keys under `prefix` (and no others)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
