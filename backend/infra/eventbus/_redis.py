"""Redis at the boundary: client creation, error translation, reconnecting retries, readiness."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar, cast

import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from backend.infra.observability import ReadinessCheck, get_logger, redact_url

from ._errors import EventBusError, EventBusUnavailable, RedisCommandError
from ._metrics import RECONNECT_WAITS

T = TypeVar("T")

_log = get_logger("backend.infra.eventbus")

# BusyLoadingError (a restarted server replaying its AOF) is a ConnectionError subclass.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    OSError,
)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that name a Redis Cluster (any of its nodes): `redis+cluster://host:port`."""


def create_redis_client(url: str, *, socket_timeout_s: float | None = 10.0) -> Redis:
    """A redis-py asyncio client set up the way the bus expects (bytes replies).

    A `redis+cluster://` (or `rediss+cluster://`) URL gives a cluster client (redis-py's
    `RedisCluster`, which finds the other nodes from the one named); the bus then needs a
    hash-tag prefix (`EVENTBUS_PREFIX={qt}`, see docs/EVENTBUS.md). The cluster client has
    the commands the bus uses under the same names, so it is returned as a `Redis`.

    redis-py's own retry is reduced to one immediate retry, which replaces a pooled connection
    that a restarted server closed; longer outages are handled by the bus's deadline-bound
    retries, which log and count them. `socket_timeout_s` must exceed the consumer's
    `block_ms`, or a blocking read would time out while waiting normally.
    """
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return cast(
            Redis,
            RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}",
                decode_responses=False,
                socket_connect_timeout=2.0,
                socket_timeout=socket_timeout_s,
            ),
        )
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 1),
    )


def translate_error(exc: BaseException, what: str) -> EventBusError:
    """The bus's exception for a redis-py error (raise it `from exc`)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return EventBusUnavailable(f"{what}: Redis unreachable: {exc}")
    if isinstance(exc, redis_errors.ResponseError):
        return RedisCommandError(f"{what}: {exc}")
    return EventBusError(f"{what}: {type(exc).__name__}: {exc}")


def backoff_delay(attempt: int, base_s: float = 0.05, cap_s: float = 0.8) -> float:
    """Exponential back-off with jitter, so many clients do not reconnect in lock-step.

    Capped below a second: a client waiting out an outage notices within a second that Redis
    is back (a reconnect attempt costs one refused connection).
    """
    return float(min(cap_s, base_s * (2 ** min(attempt, 16))) * random.uniform(0.8, 1.2))


async def call_with_reconnect(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    role: str,
    timeout_s: float,
) -> T:
    """Run `operation`, retrying with back-off while Redis is unreachable, for `timeout_s`.

    Redis errors that are not about the connection are translated and raised at once.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return await operation()
        except CONNECTION_ERRORS as exc:
            delay = backoff_delay(attempt)
            attempt += 1
            if time.monotonic() + delay > deadline:
                raise EventBusUnavailable(
                    f"{what}: Redis unreachable for {timeout_s:g}s: {exc}"
                ) from exc
            RECONNECT_WAITS.labels(role).inc()
            if attempt == 1:
                _log.warning("redis unreachable, retrying", operation=what, error=str(exc))
            await asyncio.sleep(delay)
        except redis_errors.RedisError as exc:
            raise translate_error(exc, what) from exc


MARKET_REDIS_VARIABLE = "MARKET_REDIS_URL"


def resolve_market_redis_url(env: Mapping[str, str] | None = None) -> str | None:
    """`MARKET_REDIS_URL` when set: the Redis that carries market data (the catalogue's
    `market_data` types, the ticks); None: they share the bus's Redis.

    Ticks are most of the bus's writes, and each write on a Redis with `appendfsync always`
    waits for an fsync (with its consumers' reads and acknowledgements, which are writes
    too). A tick is superseded by the next quote and never replayed, so it can live on a
    server without an append-only file, where delivering one costs no disk write at all.
    """
    env = os.environ if env is None else env
    url = (env.get(MARKET_REDIS_VARIABLE) or "").strip()
    return url or None


def describe_redis(url: str) -> str:
    """A Redis URL fit for messages and logs: its password replaced by `***`."""
    return redact_url(url)


def redis_readiness_check(
    client: Redis, name: str = "redis", timeout_s: float = 2.0, *, target: str | None = None
) -> ReadinessCheck:
    """A readiness check for `/health/ready`: Redis answers PING within `timeout_s`.

    `target` (the URL, redacted here) names the server in the error, so a 503 says which
    Redis the service could not reach.
    """
    what = f"PING {describe_redis(target)}" if target else "PING"

    async def check() -> None:
        try:
            await client.ping()
        except redis_errors.RedisError as exc:
            raise translate_error(exc, what) from exc

    return ReadinessCheck(name, check, timeout_s)
