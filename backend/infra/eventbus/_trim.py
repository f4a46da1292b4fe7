"""Trimming a stream to what every consumer group still needs (XTRIM MINID).

An entry may go once every group on the stream has had it delivered and acknowledged. For one
group that is everything before its oldest pending entry, or, with nothing pending, everything
up to its last-delivered id. The stream keeps everything from the minimum of those bounds over
all groups on. A stream without any group is left alone (only its MAXLEN applies): nobody has
said what it still needs.

Computing the bound and trimming are two commands, which is safe: between them a group can only
move forward (deliver more, acknowledge more), never back, so a bound computed earlier is at or
below the one that holds at the XTRIM.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def acknowledged_bound(client: Redis, key: str) -> str | None:
    """The lowest entry id some group on `key` still needs; None when there is no group.

    Entries strictly below it are delivered to and acknowledged by every group.
    """
    groups: list[dict[Any, Any]] = await client.xinfo_groups(key)
    if not groups:
        return None
    bounds: list[tuple[int, int]] = []
    for group in groups:
        name = _text(group["name"])
        if int(group["pending"]) > 0:
            summary = await client.xpending(key, name)
            oldest = summary.get("min")
            if oldest is not None:
                bounds.append(_parse_id(_text(oldest)))
                continue
        # Nothing pending: everything up to the last delivered entry is acknowledged. Keep
        # that entry itself (MINID keeps ids >= the bound): a group at 0-0 keeps everything.
        bounds.append(_parse_id(_text(group["last-delivered-id"])))
    low = min(bounds)
    return f"{low[0]}-{low[1]}"


async def trim_acknowledged(client: Redis, key: str) -> int:
    """Delete the entries of `key` that every consumer group has acknowledged; returns how many.

    Exact trimming (not `~`), so what is left is exactly what a group may still read or
    re-deliver. Never removes a pending or undelivered entry.
    """
    bound = await acknowledged_bound(client, key)
    if bound is None or bound == "0-0":
        return 0
    removed = await client.xtrim(key, minid=bound, approximate=False)
    return int(removed)
