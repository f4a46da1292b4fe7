"""Halting while orders are in flight: nothing that increases exposure fills after the adoption.

The venue sequence orders every fill. The halt is adopted under the same lock as every
submission and every tick, so each fill of an exposure-increasing order has a sequence at or
below the one execution recorded when it adopted the halt. How long after risk-safety's
halt that adoption comes is the window: with the push, none (risk-safety commits its halt only
after execution adopted it); with the poll alone, at most one poll interval plus the poll's
timeout, and never more than the lease. `bench/halt_window.py` measures it over many runs.
"""

from __future__ import annotations

import pytest

from tests.microservices.execution.conftest import RiskStub, running
from tests.support.halting import run_halt
from tests.support.inprocess import ServiceHarness


@pytest.mark.parametrize("mode", ["push", "poll"])
def test_no_exposure_increasing_order_fills_after_the_halt_is_adopted(
    harness: ServiceHarness, risk: RiskStub, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    poll_ms, poll_timeout_ms = 250, 1000  # the defaults
    monkeypatch.setenv("EXECUTION_RISK_POLL_MS", str(poll_ms))
    with running(harness) as client:
        result = run_halt(
            client, risk, redis_url=harness.redis_url, prefix=harness.prefix, mode=mode
        )
    print(
        f"\n{mode}: halt adopted {result.adoption_lag_ms} ms after the halt; last "
        f"exposure-increasing fill {result.window_ms} ms after it; {result.submitted} orders "
        f"({result.statuses}), {result.increasing_fills_before} increasing fills before, "
        f"{result.reducing_fills_after} reduce-only fills and {result.refused_after} refusals after"
    )
    assert result.late_increasing_fills == []
    # The run means something: orders filled before the halt and were refused after it.
    assert result.increasing_fills_before > 0
    assert result.refused_after > 0
    assert 500 not in result.statuses
    if mode == "push":
        # Risk-safety only commits its halt once execution has adopted it.
        assert result.adopted_at_ms <= result.halted_at_ms + poll_timeout_ms
    else:
        assert result.adoption_lag_ms <= poll_ms + poll_timeout_ms
