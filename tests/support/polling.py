"""Waiting for a condition with a deadline: the one poll-until of the suite, sync and async.

A test never sleeps a fixed time to wait for something; it polls what it waits for, and fails
after a deadline with what it was waiting for (and the last error a predicate raised, if any).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold within the deadline."""


class _Deadline:
    def __init__(self, timeout_s: float, what: str, ignoring: tuple[type[BaseException], ...]):
        self.timeout_s = timeout_s
        self.what = what
        self.ignoring = ignoring
        self.last_error: BaseException | None = None
        self._at = time.monotonic() + timeout_s

    def expired(self) -> bool:
        return time.monotonic() > self._at

    def fail(self, predicate: object) -> WaitTimeout:
        message = f"timed out after {self.timeout_s:g}s waiting for {self.what or predicate}"
        if self.last_error is not None:
            message += f" ({self.last_error!r})"
        return WaitTimeout(message)


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    what: str = "",
    interval_s: float = 0.02,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`predicate()`'s first truthy value; `WaitTimeout` (an AssertionError) after `timeout_s`.

    Errors of the types in `ignoring` count as "not yet" (a process that does not answer yet).
    """
    deadline = _Deadline(timeout_s, what, ignoring)
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            deadline.last_error, value = exc, None
        if value:
            return value
        if deadline.expired():
            raise deadline.fail(predicate)
        time.sleep(interval_s)


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "",
    interval_s: float = 0.01,
) -> Any:
    """`wait_until` for a coroutine: `check` may be sync or async; its first truthy value."""
    deadline = _Deadline(timeout_s, what, ())
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if deadline.expired():
            raise deadline.fail(check)
        await asyncio.sleep(interval_s)
