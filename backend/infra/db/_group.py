"""Group commit: the writes of concurrent callers share one transaction."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ._engine import session_scope

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

Stage = Callable[[AsyncSession], Callable[[], T]]
"""Adds a caller's rows to the session; returns how to read its result once they are flushed."""

WriteBatch = Callable[[AsyncSession, list[Item]], Awaitable[list[Result]]]
"""Writes a batch's items in the session's transaction; one result per item, in their order."""


@dataclass(frozen=True, slots=True)
class _Write(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


class GroupWrite(Generic[Item, Result]):
    """Writes the items of concurrent callers together, one transaction per batch.

    `await group.write(item)` returns `item`'s result once it is committed. Items that arrive
    while a batch is being committed wait and go together in the next one, handed to
    `write_batch` in arrival order, so a burst of N writers costs one commit (and, for a
    `write_batch` that inserts with one statement per table, one statement per table), not
    N, with no timer and no added latency when idle. If a batch fails, each of its items is
    tried again in its own transaction, so one bad item fails only its own caller.
    `write_batch` runs in the context of the caller that happens to commit the batch: what
    belongs to each caller's own context (its trace) is put into the item beforehand.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        write_batch: WriteBatch[Item, Result],
        *,
        max_batch: int = 512,
    ) -> None:
        self._sessions = sessions
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue: list[_Write[Item, Result]] = []
        self._lock = asyncio.Lock()

    async def write(self, item: Item) -> Result:
        """Commit `item` in a transaction shared with the items queued alongside; its result."""
        mine: _Write[Item, Result] = _Write(item, asyncio.get_running_loop().create_future())
        self._queue.append(mine)
        while not mine.future.done():
            async with self._lock:
                if not mine.future.done():
                    batch = self._queue[: self._max_batch]
                    del self._queue[: len(batch)]
                    await self._commit(batch)
        return mine.future.result()

    async def _commit(self, batch: list[_Write[Item, Result]]) -> None:
        try:
            results = await self._run([one.item for one in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for one in batch:
                try:
                    (result,) = await self._run([one.item])
                except Exception as single:
                    one.future.set_exception(single)
                else:
                    one.future.set_result(result)
            return
        except BaseException:
            for one in batch:
                if not one.future.done():
                    one.future.set_exception(RuntimeError("the group commit was cancelled"))
            raise
        for one, result in zip(batch, results, strict=True):
            one.future.set_result(result)

    async def _run(self, items: list[Item]) -> list[Result]:
        async with session_scope(self._sessions) as session:
            results = await self._write_batch(session, items)
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for a batch of {len(items)} writes")
        return results


@dataclass(frozen=True, slots=True)
class _Staged(Generic[T]):
    stage: Stage[T]
    context: contextvars.Context


class GroupCommit:
    """Commits the writes of concurrent callers together, one transaction per batch.

    `await commits.write(stage)` returns once the caller's rows are committed. Writes that
    arrive while a batch is being committed wait and go together in the next one, so a burst
    of N writers costs one commit, not N, with no timer and no added latency when idle. If a
    batch fails, each of its writes is tried again in its own transaction, so one bad write
    fails only its own caller. Each stage runs in its caller's context (its trace), in
    arrival order. (`GroupWrite` is the same for writes made by one call per batch.)
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = 512):
        self._group: GroupWrite[_Staged[Any], Any] = GroupWrite(
            sessions, _flush_stages, max_batch=max_batch
        )

    async def write(self, stage: Stage[T]) -> T:
        """Run `stage` in a transaction shared with the writes queued alongside; its result."""
        result: T = await self._group.write(_Staged(stage, contextvars.copy_context()))
        return result


async def _flush_stages(session: AsyncSession, batch: list[_Staged[Any]]) -> list[Any]:
    readers = [one.context.run(one.stage, session) for one in batch]
    await session.flush()
    return [reader() for reader in readers]
