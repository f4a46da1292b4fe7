"""Named, referenced and supervised background tasks: failures are logged, counted, restarted."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from backend.infra.observability import get_logger

TASK_FAILURES = Counter(
    "service_task_failures_total", "Background task failures, by task.", ["task"]
)
TASKS_RUNNING = Gauge("service_tasks_running", "Background tasks running, by task.", ["task"])

_log = get_logger("backend.infra.service.tasks")


class Supervisor:
    """Runs coroutines as named tasks; a task that raises is restarted with back-off.

    A task that returns normally is done (not restarted). `stop()` cancels what is left and
    waits for it, so nothing outlives the service's lifespan.
    """

    def __init__(self, max_backoff_s: float = 30.0) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._max_backoff_s = max_backoff_s

    @property
    def names(self) -> list[str]:
        return sorted(name for name, task in self._tasks.items() if not task.done())

    def start(self, name: str, fn: Callable[[], Awaitable[None]], restart: bool = True) -> None:
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        self._tasks[name] = asyncio.create_task(self._run(name, fn, restart), name=name)

    async def _run(self, name: str, fn: Callable[[], Awaitable[None]], restart: bool) -> None:
        failures = 0
        while True:
            TASKS_RUNNING.labels(name).set(1)
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                TASK_FAILURES.labels(name).inc()
                _log.exception("background task failed", task=name, failures=failures)
                if not restart:
                    return
            finally:
                TASKS_RUNNING.labels(name).set(0)
            delay = min(self._max_backoff_s, 0.2 * 2 ** min(failures, 8))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def stop(self, timeout_s: float = 10.0) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        self._tasks.clear()
