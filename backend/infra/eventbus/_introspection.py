"""Read-only views of a consumer group: what it still has to handle on one stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio import Redis

from ._redis import CONNECTION_ERRORS, translate_error
from ._settings import EventBusSettings

# Entries counted one by one when Redis cannot tell a group's lag; past it the lag is a floor.
LAG_COUNT_CAP = 1_000
_PAGE = 500
_ERRORS: tuple[type[BaseException], ...] = (redis_errors.RedisError, *CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class GroupBacklog:
    """How far one consumer group is from having handled every entry of one stream.

    `pending`: delivered to the group and not acknowledged (being handled, waiting for a retry,
    or left by a dead consumer). `lag`: in the stream and not yet delivered to the group; None
    when the group does not exist (nothing is known). `dead_letters`: entries of this group in
    the stream's dead-letter stream, which stay until an operator removes them.
    """

    pending: int
    lag: int | None
    dead_letters: int

    @property
    def clear(self) -> bool:
        """Every entry of the stream was handled by the group and none was dead-lettered."""
        return self.pending == 0 and self.lag == 0 and self.dead_letters == 0


class GroupMonitor:
    """Reads the backlog of `group` on `stream` (a logical stream name, e.g. "order.filled").

    One `backlog()` costs one round trip, plus a scan of the dead-letter stream when that
    stream changed since the last call (it is shared by every group of the stream, so its
    entries are counted by their `group` field). Errors are raised as the bus's exceptions,
    at once: a caller asking "am I complete?" wants a quick "unknown", not a reconnect loop.
    """

    def __init__(
        self, client: Redis, group: str, stream: str, settings: EventBusSettings | None = None
    ) -> None:
        settings = settings or EventBusSettings.from_env()
        self._client = client
        self.group = group
        self.stream_key = settings.stream_key(stream)
        self.dead_letter_key = settings.dead_letter_key(stream)
        # (length, last entry id) of the dead-letter stream when it was last counted.
        self._dead_letter_mark: tuple[int, bytes | None] = (0, None)
        self._dead_letters = 0

    async def backlog(self) -> GroupBacklog:
        """The group's pending entries, lag and dead letters right now."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xinfo_groups(self.stream_key)
            pipe.xlen(self.dead_letter_key)
            pipe.xrevrange(self.dead_letter_key, "+", "-", count=1)
            groups, dead_length, last_dead = await pipe.execute(raise_on_error=False)
            for reply in (dead_length, last_dead):
                if isinstance(reply, Exception):
                    raise reply
            info = self._group_info(groups)
            dead_letters = await self._count_dead_letters(
                int(dead_length), last_dead[0][0] if last_dead else None
            )
            if info is None:
                return GroupBacklog(pending=0, lag=None, dead_letters=dead_letters)
            lag = info.get("lag")
            if lag is None:
                lag = await self._count_undelivered(_text(info["last-delivered-id"]))
            return GroupBacklog(
                pending=int(info["pending"]), lag=int(lag), dead_letters=dead_letters
            )
        except _ERRORS as exc:
            raise translate_error(exc, f"backlog of {self.group} on {self.stream_key}") from exc

    def _group_info(self, groups: Any) -> dict[Any, Any] | None:
        if isinstance(groups, redis_errors.ResponseError) and "no such key" in str(groups).lower():
            return None  # no stream yet, so no group either
        if isinstance(groups, Exception):
            raise groups
        for info in groups:
            if _text(info["name"]) == self.group:
                return dict(info)
        return None

    async def _count_undelivered(self, last_delivered: str) -> int:
        # Redis < 7, or a stream with deleted entries, reports no lag: count what is left.
        entries: list[Any] = await self._client.xrange(  # type: ignore[assignment]
            self.stream_key, "(" + last_delivered, "+", count=LAG_COUNT_CAP
        )
        return len(entries)

    async def _count_dead_letters(self, length: int, last_id: bytes | None) -> int:
        mark = (length, last_id)
        if mark == self._dead_letter_mark:
            return self._dead_letters
        count = 0
        start = "-"
        while True:
            page: list[Any] = await self._client.xrange(  # type: ignore[assignment]
                self.dead_letter_key, start, "+", count=_PAGE
            )
            group = self.group.encode()
            count += sum(1 for _entry_id, fields in page if fields.get(b"group") == group)
            if len(page) < _PAGE:
                break
            start = "(" + _text(page[-1][0])
        self._dead_letter_mark = mark
        self._dead_letters = count
        return count


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
