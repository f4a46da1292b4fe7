"""Checks share reads of the portfolio and of execution, and every limit still holds."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from microservices.risk_safety.guard import SharedRead
from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, check, tick
from tests.support.inprocess import ServiceHarness


async def test_a_read_under_way_is_joined_and_a_finished_one_is_not() -> None:
    release = asyncio.Event()
    calls: list[int] = []

    async def fetch() -> int:
        calls.append(1)
        await release.wait()
        return len(calls)

    reads = SharedRead(fetch, share_ms=60_000)
    first, second = reads.join(), reads.join()
    assert first is second
    release.set()
    assert await first.result == 1
    third = reads.join()
    assert third is not first and await third.result == 2
    no_sharing = SharedRead(fetch, share_ms=0)
    assert no_sharing.join() is not no_sharing.join()


def test_concurrent_checks_sharing_reads_never_walk_past_a_position_limit(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    execution.work("resting", "BUY", "0.4")  # already working at execution
    with harness.run(create_service) as client:
        tick(harness, client)
        results: list[dict[str, Any]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            answer = check(client, f"walk-{i}", quantity="0.25")
            with lock:
                results.append(answer)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        approved = [r for r in results if r["approved"]]
        # 0.4 working + 2 x 0.25 = 0.9; a third would make 1.15.
        assert len(results) == 12 and len(approved) == 2, results
        assert {r["reason"] for r in results if not r["approved"]} == {"MAX_POSITION"}
