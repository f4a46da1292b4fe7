"""Idempotency keyed by event id: a redelivered event takes effect once.

Each processed event id is a Redis key `{prefix}:processed:{scope}:{event_id}` with a TTL.
Two ways to use it:

* `apply_once(event_id, effect)` — for effects that are Redis writes: the effect and the
  processed mark are committed in one MULTI/EXEC, guarded by WATCH on the mark. Either both
  happen or neither, so the effect happens exactly once however often the event is delivered
  (within the TTL).
* `seen_many` / `mark_many` — what the consumer does around any handler: skip events already
  marked, mark after success (in the same transaction as the XACK). Here there is a window:
  a consumer that dies after the handler's effect but before that transaction lets the event
  be handled again. Handlers with effects outside Redis close it by recording the event id in
  the same transaction as their effect (e.g. a unique row in the same SQL transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ._redis import call_with_reconnect
from ._settings import EventBusSettings

# Positions (1-based) of the keys that exist.
_SEEN_SCRIPT = """
local seen = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then seen[#seen + 1] = i end
end
return seen
"""

# Mark every key, with the TTL in ARGV[1]; replies with one integer.
_MARK_SCRIPT = """
for _, key in ipairs(KEYS) do redis.call('SET', key, '1', 'EX', ARGV[1]) end
return #KEYS
"""


class Idempotency:
    """Remembers processed event ids of one scope (usually the consumer group) for `ttl_s`.

    The TTL bounds the guarantee: a copy of an event delivered later than `ttl_s` after the
    first one was processed would take effect again. Keep it far above the longest time an
    entry can stay pending (`claim_idle_ms` x `max_deliveries` plus outages); default 7 days.
    """

    def __init__(
        self,
        client: Redis,
        scope: str,
        settings: EventBusSettings | None = None,
        *,
        ttl_s: int | None = None,
    ) -> None:
        self._client = client
        self._settings = settings or EventBusSettings.from_env()
        self.scope = scope
        self.ttl_s = ttl_s if ttl_s is not None else self._settings.dedup_ttl_s

    def key(self, event_id: str) -> str:
        """The Redis key that marks `event_id` as processed in this scope."""
        return self._settings.processed_key(self.scope, event_id)

    async def seen(self, event_id: str) -> bool:
        """True when `event_id` was already processed in this scope."""
        return bool((await self.seen_many([event_id]))[0])

    async def seen_many(self, event_ids: Sequence[str]) -> list[bool]:
        """For each id, whether it was already processed; one command, one short reply.

        A script answers with the positions of the ids already seen (usually none) instead
        of one reply per id: redis-py parses replies in Python, one call per element.
        """
        if not event_ids:
            return []
        keys = [self.key(event_id) for event_id in event_ids]

        async def check() -> Any:
            return await self._client.eval(_SEEN_SCRIPT, len(keys), *keys)

        positions = await call_with_reconnect(
            check,
            what="EVAL seen",
            role="consumer",
            timeout_s=self._settings.reconnect_timeout_s,
        )
        seen = [False] * len(keys)
        for position in positions:
            seen[int(position) - 1] = True
        return seen

    def add_marks(
        self, pipe: Pipeline, event_ids: Sequence[str], *, ttl_s: int | None = None
    ) -> None:
        """Queue the marks of `event_ids` on `pipe` as one command (to commit them with others),
        each kept for `ttl_s` (default: this helper's `ttl_s`)."""
        if event_ids:
            keys = [self.key(event_id) for event_id in event_ids]
            pipe.eval(_MARK_SCRIPT, len(keys), *keys, ttl_s or self.ttl_s)

    async def mark_many(self, event_ids: Sequence[str]) -> None:
        """Mark ids as processed; one round trip."""
        if not event_ids:
            return

        async def mark() -> None:
            pipe = self._client.pipeline(transaction=False)
            self.add_marks(pipe, event_ids)
            await pipe.execute()

        await call_with_reconnect(
            mark,
            what="SET processed",
            role="consumer",
            timeout_s=self._settings.reconnect_timeout_s,
        )

    async def claim(self, event_id: str) -> bool:
        """Mark `event_id` now (SET NX); True if this caller is the first.

        At-most-once: if the caller dies after claiming and before its effect, the effect
        never happens. Prefer `apply_once` for Redis effects.
        """

        async def set_nx() -> Any:
            return await self._client.set(self.key(event_id), b"1", nx=True, ex=self.ttl_s)

        result = await call_with_reconnect(
            set_nx,
            what="SET NX processed",
            role="consumer",
            timeout_s=self._settings.reconnect_timeout_s,
        )
        return bool(result)

    async def apply_once(self, event_id: str, effect: Callable[[Pipeline], object]) -> bool:
        """Queue `effect`'s Redis commands and the processed mark in one transaction.

        `effect(pipe)` adds commands to `pipe` (it must not await). Returns False, running
        nothing, when the event was already processed; True when this call applied it.
        """
        key = self.key(event_id)

        async def attempt() -> bool:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        if await pipe.exists(key):
                            return False
                        pipe.multi()  # type: ignore[no-untyped-call]
                        effect(pipe)
                        pipe.set(key, b"1", ex=self.ttl_s)
                        await pipe.execute()
                        return True
                    except redis_errors.WatchError:
                        # Another consumer marked it between WATCH and EXEC: look again.
                        continue

        # A retry after a lost EXEC reply finds the mark and returns False: still applied once.
        return await call_with_reconnect(
            attempt,
            what="apply_once",
            role="consumer",
            timeout_s=self._settings.reconnect_timeout_s,
        )
