"""An exit of a position the background read of execution already reflects is judged on that
read, with no read of execution on its path; the exits approved since still count. (An exit
right after its entry reads execution: `test_portfolio_refresh.py`.)"""

from __future__ import annotations

import pytest

from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, check, tick
from tests.microservices.risk_safety.test_portfolio_refresh import CheckInThread
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def test_an_exit_of_a_position_the_background_read_reflects_does_not_wait_for_execution(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_READ_SHARE_MS", "60000")
    monkeypatch.setenv("RISK_REFRESH_MS", "50")
    # Bought before: execution holds it and reports its order received.
    execution.holdings = {"BTCUSDT": "1"}
    execution.received.append("in-1")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "other-1", symbol="BTCUSDT", quantity="0.1")["approved"] is True
        execution.received.append("other-1")
        seen = len(execution.since)
        wait_until(lambda: len(execution.since) >= seen + 2, 10, "background reads of execution")
        # Every read of execution from now on is slow to answer.
        execution.hold_next_exposure = True
        wait_until(execution.exposure_held.is_set, 10, "a background read of execution")
        try:
            answer = CheckInThread_(client, "out-1", "0.6").wait(5)
        finally:
            execution.exposure_release.set()
        assert answer is not None, "the exit waited for a read of execution"
        assert answer["approved"] is True, answer
        # That exit counts in flight until a read reports it: a second one would sell more
        # than is held.
        again = check(client, "out-2", side="SELL", quantity="0.6", reduce_only=True)
        assert (again["approved"], again["reason"]) == (False, "INVALID_ORDER"), again


class CheckInThread_(CheckInThread):
    """A reduce-only SELL of BTCUSDT checked from another thread."""

    def _run(self, client: object, cid: str, quantity: str) -> None:
        self.answer = check(client, cid, side="SELL", quantity=quantity, reduce_only=True)  # type: ignore[arg-type]
