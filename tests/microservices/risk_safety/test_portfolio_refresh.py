"""The portfolio and execution's exposure are read in the background while checks come; a
check never judges on an answer whose read began longer ago than a joined read may have, nor
after a failed read, nor on an answer overtaken by a read begun later."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from bisect import insort
from typing import Any

import pytest

from backend.infra.observability import get_logger, get_tracer
from backend.infra.service import Resources, ServiceSettings
from microservices.risk_safety.guard import RiskGuard, SharedRead
from microservices.risk_safety.service import create_service
from microservices.risk_safety.settings import RiskSafetySettings
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, check, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


class CheckInThread:
    """POST /check from another thread, so the test can look while it waits for a read."""

    def __init__(self, client: Any, cid: str, quantity: str = "1") -> None:
        self.answer: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(client, cid, quantity), daemon=True)
        self.thread.start()

    def _run(self, client: Any, cid: str, quantity: str) -> None:
        self.answer = check(client, cid, quantity=quantity)

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        self.thread.join(timeout_s)
        return self.answer


async def test_an_answer_overtaken_by_a_read_begun_later_is_never_offered() -> None:
    gates = {1: asyncio.Event(), 2: asyncio.Event()}
    calls = iter((1, 2))

    async def fetch() -> int:
        n = next(calls)
        await gates[n].wait()
        return n

    reads = SharedRead(fetch, share_ms=60_000)
    first, second = reads.begin(), reads.begin()
    assert reads.recent() is None
    assert reads.oldest_offered_ms() == first.started_ms
    gates[2].set()
    await second.result
    gates[1].set()
    await first.result
    offered = reads.recent()
    assert offered is second, "the answer of the read begun first came last and won"
    assert reads.oldest_offered_ms() == second.started_ms


async def test_a_background_refresh_adds_no_read_to_one_begun_within_its_interval() -> None:
    async def fetch() -> int:
        return 1

    reads = SharedRead(fetch, share_ms=60_000)
    begun = reads.join()
    assert reads.renew(60_000) is begun
    await begun.result
    assert reads.renew(60_000) is begun, "answered, and still within the interval"
    renewed = reads.renew(0)
    assert renewed is not begun
    await renewed.result


async def test_a_failed_read_withdraws_the_answer_and_a_stale_one_is_not_offered() -> None:
    answers: list[int | None] = [7, None, 8]

    async def fetch() -> int | None:
        return answers.pop(0)

    reads = SharedRead(fetch, share_ms=60_000)
    assert await reads.begin().result == 7
    assert reads.recent() is not None
    assert await reads.begin().result is None
    assert reads.recent() is None, "offered an answer after a failed read"
    assert await reads.begin().result == 8
    assert reads.recent() is not None
    assert SharedRead(fetch, share_ms=0).recent() is None


def test_a_check_uses_the_background_read_instead_of_waiting_for_its_own(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    monkeypatch.setenv("RISK_REFRESH_MS", "50")
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "f-1", quantity="0.5")["approved"] is True
        seen = portfolio.reads
        wait_until(lambda: portfolio.reads >= seen + 2, 10, "background reads of the portfolio")
        portfolio.release.clear()  # every read from now on waits
        try:
            answer = CheckInThread(client, "f-2", "0.5").wait(5)
        finally:
            portfolio.release.set()
        assert answer is not None, "the check waited for a portfolio read"
        assert answer["approved"] is True
        # Execution's answers now wait too; the check judges on the background read, and
        # the approvals given since count from the ledger: a third 0.5 would pass the limit.
        execution.hold_next_exposure = True
        wait_until(execution.exposure_held.is_set, 10, "a background read of execution")
        try:
            over = CheckInThread(client, "f-3", "0.5").wait(5)
        finally:
            execution.exposure_release.set()
        assert over is not None, "the check waited for a read of execution"
        assert over["reason"] == "MAX_POSITION"


def test_an_exit_right_after_its_entry_filled_is_judged_on_a_read_that_sees_the_fill(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    monkeypatch.setenv("RISK_REFRESH_MS", "60000")  # one background read, at the first check
    with harness.run(create_service) as client:
        tick(harness, client)
        seen = len(execution.since)
        assert check(client, "in-1")["approved"] is True
        wait_until(lambda: len(execution.since) >= seen + 1, 10, "a read of execution")
        # The entry fills: execution holds it, and has it received.
        execution.holdings = {"BTCUSDT": "1"}
        execution.received.append("in-1")
        out = check(client, "out-1", side="SELL", quantity="1", reduce_only=True)
        assert out["approved"] is True, out


def test_an_answer_whose_read_began_longer_ago_than_the_share_bound_is_not_used(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "300")
    monkeypatch.setenv("RISK_REFRESH_MS", "50")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "g-1")["approved"] is True
        seen = portfolio.reads
        wait_until(lambda: portfolio.reads >= seen + 2, 10, "background reads of the portfolio")
        # The portfolio learns it lost a fill, and its answers are slow to come: every
        # answer risk holds now began before it.
        portfolio.release.clear()
        portfolio.fills(dead_letters=1)
        time.sleep(0.6)  # past the 300 ms bound
        pending = CheckInThread(client, "g-2")
        try:
            assert pending.wait(0.3) is None, "decided on an answer older than the bound"
        finally:
            portfolio.release.set()
        answer = pending.wait(10)
        assert answer is not None
        assert (answer["reason"], "dead-lettered" in answer["detail"]) == (
            "STALE_PORTFOLIO",
            True,
        )


def test_a_failed_background_read_withdraws_the_answer_before_it(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    monkeypatch.setenv("RISK_REFRESH_MS", "50")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "h-1")["approved"] is True
        portfolio.status = 503
        wait_until(
            lambda: client.get("/state").json()["portfolio"]["reachable"] is False,
            10,
            "a background read to fail",
        )
        answer = check(client, "h-2")
        assert answer["reason"] == "STALE_PORTFOLIO"
        assert "portfolio unavailable" in answer["detail"]


def test_the_order_rate_window_counts_as_a_scan_of_every_approval_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window_ms, limit = 1_000, 700
    monkeypatch.setenv("RISK_ORDER_WINDOW_MS", str(window_ms))
    monkeypatch.setenv("RISK_MAX_ORDERS", str(limit))
    guard = RiskGuard(
        RiskSafetySettings(),
        Resources("risk-safety", ServiceSettings()),
        get_logger("test"),
        get_tracer("test"),
    )
    rng = random.Random(13)
    given: list[int] = []
    now = 1_000_000
    for _ in range(5_000):
        now += rng.choice((0, 1, 1, 2, 3))
        guard._trim_window(now)
        handed = guard._recent_approvals(now)
        in_window = sum(1 for t in given if now - window_ms < t <= now)
        counted = sum(1 for t in handed if now - window_ms < t <= now)
        # What the rule decides on: at the limit or not, as with every approval handed over.
        assert (counted >= limit) == (in_window >= limit), (now, counted, in_window)
        if in_window < limit:
            # Approved: recorded at its time, or a little earlier (a clock stepped back).
            at = now - rng.choice((0, 0, 0, 0, 5))
            insort(guard._approvals, at)  # as a check records its approval
            given.append(at)
