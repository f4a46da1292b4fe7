"""Group commit: the writes of concurrent callers share one transaction."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ._engine import session_scope

T = TypeVar("T")

Stage = Callable[[AsyncSession], Callable[[], T]]
"""Adds a caller's rows to the session; returns how to read its result once they are flushed."""


@dataclass(frozen=True, slots=True)
class _Write(Generic[T]):
    stage: Stage[T]
    context: contextvars.Context
    future: asyncio.Future[T]


class GroupCommit:
    """Commits the writes of concurrent callers together, one transaction per batch.

    `await commits.write(stage)` returns once the caller's rows are committed. Writes that
    arrive while a batch is being committed wait and go together in the next one, so a burst
    of N writers costs one commit, not N, with no timer and no added latency when idle. If a
    batch fails, each of its writes is tried again in its own transaction, so one bad write
    fails only its own caller. Each stage runs in its caller's context (its trace), in
    arrival order.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = 512):
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: list[_Write[Any]] = []
        self._lock = asyncio.Lock()

    async def write(self, stage: Stage[T]) -> T:
        """Run `stage` in a transaction shared with the writes queued alongside; its result."""
        loop = asyncio.get_running_loop()
        mine: _Write[T] = _Write(stage, contextvars.copy_context(), loop.create_future())
        self._queue.append(mine)
        while not mine.future.done():
            async with self._lock:
                if not mine.future.done():
                    batch = self._queue[: self._max_batch]
                    del self._queue[: len(batch)]
                    await self._commit(batch)
        return mine.future.result()

    async def _commit(self, batch: list[_Write[Any]]) -> None:
        try:
            results = await self._run(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for one in batch:
                try:
                    (result,) = await self._run([one])
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

    async def _run(self, batch: list[_Write[Any]]) -> list[Any]:
        async with session_scope(self._sessions) as session:
            readers = [one.context.run(one.stage, session) for one in batch]
            await session.flush()
            return [reader() for reader in readers]
