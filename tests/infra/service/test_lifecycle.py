"""A `Service` on a real Redis and database: start-up retries, restarts, the shutdown order."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from backend.infra.eventbus import Event
from backend.infra.service import Resources, Service
from backend.trading.events import MarketTick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.procs import free_port

NAME = "lifecycle-test"


def test_shutdown_stops_the_consumer_then_cancels_tasks_then_runs_hooks_in_reverse(
    harness: ServiceHarness,
) -> None:
    steps: list[str] = []

    def build() -> Service:
        service = Service(NAME, database=True, eventbus=True)

        async def on_tick(event: Event[MarketTick]) -> None:
            pass

        service.subscribe(MarketTick, on_tick)

        async def loop(r: Resources) -> None:
            steps.append("task started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                steps.append(f"task cancelled (consumer running: {r.consumer.running})")
                raise

        service.background("loop", loop)

        @service.on_shutdown
        async def registered_first(r: Resources) -> None:
            steps.append(f"hook registered first (Redis answers: {await r.redis.ping()})")

        @service.on_shutdown
        async def registered_second(r: Resources) -> None:
            steps.append("hook registered second")

        return service

    with harness.run(build):
        wait_until(lambda: "task started" in steps, what="the background task to start")
    assert steps == [
        "task started",
        "task cancelled (consumer running: False)",
        "hook registered second",
        "hook registered first (Redis answers: True)",
    ]


def test_a_failing_shutdown_hook_does_not_keep_the_others_from_running(
    harness: ServiceHarness,
) -> None:
    ran: list[str] = []

    def build() -> Service:
        service = Service(NAME, database=True)

        @service.on_shutdown
        async def last(r: Resources) -> None:
            ran.append("last")

        @service.on_shutdown
        async def broken(r: Resources) -> None:
            ran.append("broken")
            raise RuntimeError("hook failed")

        return service

    with harness.run(build):
        pass
    assert ran == ["broken", "last"]


def test_a_background_loop_that_raises_is_restarted(harness: ServiceHarness) -> None:
    runs: list[int] = []

    def build() -> Service:
        service = Service(NAME, database=True)

        async def loop(r: Resources) -> None:
            runs.append(len(runs) + 1)
            if len(runs) == 1:
                raise RuntimeError("the first run fails")
            await asyncio.Event().wait()

        service.background("flaky", loop)
        return service

    with harness.run(build) as client:
        wait_until(lambda: len(runs) == 2, 10, "the loop to be restarted")
        metrics = client.get("/metrics").text
    assert 'service_task_failures_total{task="flaky"}' in metrics


def test_a_failing_start_up_keeps_readiness_at_503_naming_the_error_until_it_succeeds(
    harness: ServiceHarness,
) -> None:
    model_ready = threading.Event()
    loop_runs: list[str] = []
    service = Service(NAME, database=True, eventbus=True)

    @service.on_startup
    async def load_model(r: Resources) -> None:
        if not model_ready.is_set():
            raise RuntimeError("no model trained yet")

    async def loop(r: Resources) -> None:
        loop_runs.append("run")
        await asyncio.Event().wait()

    service.background("loop", loop)

    with TestClient(service.app, headers=harness.auth_headers) as client:
        body = wait_until(
            lambda: "no model" in (r := client.get("/health/ready")).text and r,
            10,
            "readiness to name the start-up failure",
        )
        assert body.status_code == 503
        assert body.json()["failing"] == ["startup"]
        # The check re-raises the start-up error as a RuntimeError, hence the outer type name.
        error = body.json()["checks"]["startup"]["error"]
        assert error.endswith("RuntimeError: no model trained yet"), error
        assert client.get("/health/live").status_code == 200, "alive while not ready"
        assert loop_runs == [], "background tasks wait for a successful start-up"
        model_ready.set()
        wait_until(lambda: client.get("/health/ready").status_code == 200, 15, "the retry")
        wait_until(lambda: loop_runs, 5, "the background task once started")


def test_an_unreachable_database_is_a_503_naming_it_not_a_crash(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    monkeypatch.setenv("DATABASE_URL", nowhere)
    service = Service(NAME, database=True)

    with TestClient(service.app, headers=harness.auth_headers) as client:
        response = wait_until(
            lambda: "starting" not in (r := client.get("/health/ready")).text and r,
            10,
            "the first start-up attempt to fail",
        )
        assert response.status_code == 503
        body = response.json()
        assert "startup" in body["failing"]
        assert "refused" in body["checks"]["startup"]["error"].lower(), body
        assert client.get("/health/live").status_code == 200
