"""The portfolio is read in the background while checks come; a check never judges on an
answer whose read began longer ago than a joined read may have, nor after a failed read."""

from __future__ import annotations

import random
import threading
import time
from bisect import insort
from typing import Any

import pytest

from backend.infra.observability import get_logger, get_tracer
from backend.infra.service import Resources, ServiceSettings
from microservices.risk_safety.guard import RiskGuard
from microservices.risk_safety.service import create_service
from microservices.risk_safety.settings import RiskSafetySettings
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, check, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


class CheckInThread:
    """POST /check from another thread, so the test can look while it waits for a read."""

    def __init__(self, client: Any, cid: str) -> None:
        self.answer: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(client, cid), daemon=True)
        self.thread.start()

    def _run(self, client: Any, cid: str) -> None:
        self.answer = check(client, cid)

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        self.thread.join(timeout_s)
        return self.answer


def test_a_check_uses_the_background_read_instead_of_waiting_for_its_own(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    monkeypatch.setenv("RISK_PORTFOLIO_REFRESH_MS", "50")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "f-1")["approved"] is True
        seen = portfolio.reads
        wait_until(lambda: portfolio.reads >= seen + 2, 10, "background reads of the portfolio")
        portfolio.release.clear()  # every read from now on waits
        try:
            answer = CheckInThread(client, "f-2").wait(5)
        finally:
            portfolio.release.set()
        assert answer is not None, "the check waited for a portfolio read"
        assert answer["approved"] is True


def test_an_answer_whose_read_began_longer_ago_than_the_share_bound_is_not_used(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "300")
    monkeypatch.setenv("RISK_PORTFOLIO_REFRESH_MS", "50")
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
    monkeypatch.setenv("RISK_PORTFOLIO_REFRESH_MS", "50")
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
