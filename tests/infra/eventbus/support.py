"""Helpers for the event bus tests: polling with a deadline, reading streams and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import REGISTRY


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout_s: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll `check` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def metric(name: str, **labels: str) -> float:
    """The current value of a sample in the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
