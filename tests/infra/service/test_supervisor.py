"""The supervisor of background tasks: restart with back-off, failures counted, clean stop."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable

import pytest

from backend.infra.service import _supervisor
from backend.infra.service._supervisor import Supervisor
from tests.support.metrics import metric
from tests.support.polling import eventually


def failing(times: int, calls: list[int]) -> Callable[[], Awaitable[None]]:
    """A task that raises on its first `times` runs, then returns; each run is appended."""

    async def run() -> None:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise RuntimeError(f"run {len(calls)} failed")

    return run


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off delays the supervisor asks for, without jitter and without waiting them."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        asked.append(round(delay, 6))
        await real_sleep(0)

    # Only the supervisor's view of asyncio changes; the event loop keeps the real one.
    fake = types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    monkeypatch.setattr(_supervisor, "asyncio", fake)
    monkeypatch.setattr(_supervisor.random, "uniform", lambda low, high: 1.0)
    return asked


async def test_a_failing_task_is_restarted_with_doubling_back_off_up_to_the_cap(
    delays: list[float],
) -> None:
    calls: list[int] = []
    supervisor = Supervisor(max_backoff_s=2.0)
    supervisor.start("flaky", failing(5, calls))
    await eventually(lambda: len(calls) == 6, what="five restarts")
    await eventually(lambda: supervisor.names == [], what="the task to finish")
    assert delays == [0.4, 0.8, 1.6, 2.0, 2.0]
    await supervisor.stop()


async def test_the_back_off_is_jittered_within_a_fifth_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        asked.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(
        _supervisor, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    )
    calls: list[int] = []
    supervisor = Supervisor(max_backoff_s=100.0)
    supervisor.start("flaky", failing(8, calls))
    await eventually(lambda: len(calls) == 9, what="eight restarts")
    nominal = [0.2 * 2**n for n in range(1, 9)]
    assert all(0.8 * d <= a <= 1.2 * d for a, d in zip(asked, nominal, strict=True)), asked
    assert len(set(round(a / d, 6) for a, d in zip(asked, nominal, strict=True))) > 1, "no jitter"
    await supervisor.stop()


async def test_every_failure_is_counted_by_task_name(delays: list[float]) -> None:
    before = metric("service_task_failures_total", task="counted")
    calls: list[int] = []
    supervisor = Supervisor()
    supervisor.start("counted", failing(3, calls))
    await eventually(lambda: len(calls) == 4, what="three restarts")
    assert metric("service_task_failures_total", task="counted") - before == 3
    await supervisor.stop()


async def test_a_task_that_returns_is_done_and_not_restarted(delays: list[float]) -> None:
    calls: list[int] = []
    supervisor = Supervisor()
    supervisor.start("once", failing(0, calls))
    await eventually(lambda: supervisor.names == [], what="the task to finish")
    await asyncio.sleep(0)  # one more turn of the loop: a restart would have been scheduled
    assert calls == [1] and delays == []
    await supervisor.stop()


async def test_a_task_started_without_restart_is_not_restarted_after_a_failure(
    delays: list[float],
) -> None:
    before = metric("service_task_failures_total", task="no-restart")
    calls: list[int] = []
    supervisor = Supervisor()
    supervisor.start("no-restart", failing(1, calls), restart=False)
    await eventually(lambda: supervisor.names == [], what="the task to end")
    assert calls == [1] and delays == []
    assert metric("service_task_failures_total", task="no-restart") - before == 1
    await supervisor.stop()


async def test_stop_cancels_running_tasks_and_waits_for_them() -> None:
    started = asyncio.Event()
    cleaned_up: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while: stop() must wait for it
            cleaned_up.append("forever")

    supervisor = Supervisor()
    supervisor.start("forever", forever)
    await started.wait()
    assert supervisor.names == ["forever"]
    assert metric("service_tasks_running", task="forever") == 1
    await supervisor.stop()
    assert cleaned_up == ["forever"]
    assert supervisor.names == []
    assert metric("service_tasks_running", task="forever") == 0


async def test_a_name_cannot_run_twice_but_can_be_reused_once_done() -> None:
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    supervisor = Supervisor()
    supervisor.start("job", wait)
    with pytest.raises(RuntimeError, match="'job' is already running"):
        supervisor.start("job", wait)
    release.set()
    await eventually(lambda: supervisor.names == [], what="the job to finish")
    supervisor.start("job", wait)
    assert supervisor.names == ["job"]
    await supervisor.stop()
