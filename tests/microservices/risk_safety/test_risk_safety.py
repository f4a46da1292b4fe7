"""risk-safety over real HTTP, Redis and a database, against real HTTP stubs of its neighbours.

Quotes arrive as real `MarketTick` events on the bus; the stubs are in `conftest.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from backend.trading.approval import (
    DEVELOPMENT_SECRET,
    Approval,
    SignedState,
    verify_approval,
    verify_state,
)
from backend.trading.types import ClientOrderId, OrderRequest, Side, Symbol
from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import (
    ExecutionStub,
    PortfolioStub,
    check,
    metric,
    tick,
)
from tests.support.factories import now_ms
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.procs import free_port


def test_an_approval_is_signed_for_the_order_in_the_current_epoch_persisted_and_published(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        result = check(client, "ok-1", quantity="2.50")
        assert (result["approved"], result["reason"], result["state"]) == (
            True,
            "APPROVED",
            "ACTIVE",
        )
        approval = result["approval"]
        assert approval["decision_id"] == result["decision_id"]
        assert approval["epoch"] == client.get("/state").json()["epoch"] == 0
        verify_approval(
            DEVELOPMENT_SECRET,
            Approval(
                approval["decision_id"],
                approval["token"],
                approval["expires_ms"],
                approval["epoch"],
            ),
            order=OrderRequest(ClientOrderId("ok-1"), Symbol("BTCUSDT"), Side.BUY, Decimal("2.5")),
            now_ms=now_ms(),
            current_epoch=0,
        )
        decisions = client.get("/decisions").json()["data"]
        assert [(d["decision_id"], d["reason"]) for d in decisions] == [
            (result["decision_id"], "APPROVED")
        ]
        assert decisions[0]["trace_id"]
        # Published by the outbox's relay once the answer is sent.
        published = wait_until(
            lambda: harness.published("risk.decision"), 10, "the decision on the bus"
        )
        assert [(e["client_order_id"], e["approved"]) for e in published] == [("ok-1", True)]


def test_audit_f1_a_caller_price_of_1_is_recorded_but_the_order_is_judged_at_the_ask(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=2")
    with harness.run(create_service) as client:
        tick(harness, client, bid="39976.50", ask="39977.00")
        denied = check(client, "f1-1", quantity="0.7", price="1")
        assert (denied["approved"], denied["reason"]) == (False, "MAX_NOTIONAL")
        assert "39977" in denied["detail"]
        (decision,) = client.get("/decisions").json()["data"]
        assert (decision["reference_price"], decision["caller_price"]) == ("39977.00", "1")
        # Old clients that send no price at all are judged the same way.
        assert check(client, "f1-2", quantity="0.6", price=None)["approved"] is True


def test_a_market_buy_is_judged_with_the_venues_slippage_cap_and_taker_fee(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_ORDER_NOTIONAL", "1000")
    monkeypatch.setenv("VENUE_MAX_SLIPPAGE_BPS", "25")
    monkeypatch.setenv("VENUE_TAKER_FEE_BPS", "10")
    with harness.run(create_service) as client:
        tick(harness, client)
        # 9.96 x 100 x 1.0025 x 1.001 = 999.49; 9.98 would be 1001.50.
        assert check(client, "c-1", quantity="9.96")["approved"] is True
        assert check(client, "c-2", quantity="9.98")["reason"] == "MAX_NOTIONAL"
        # A limit order at its limit, fee included: 9.98 x 100 x 1.001 = 999.0.
        assert check(client, "c-3", quantity="9.98", limit_price="100")["approved"] is True


def test_no_quote_and_a_stale_quote_deny_with_their_own_reasons(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_QUOTE_AGE_MS", "1000")
    with harness.run(create_service) as client:
        none = check(client, "q-1")
        assert (none["approved"], none["reason"]) == (False, "NO_QUOTE")
        # Received just now, but quoted ten seconds ago: a lagging feed is not fresh.
        tick(harness, client, bid="99", ask="101", ts_ms=now_ms() - 10_000)
        stale = check(client, "q-2")
        assert (stale["approved"], stale["reason"]) == (False, "STALE_QUOTE")
        assert "ms old" in stale["detail"]
        tick(harness, client, bid="99", ask="100")
        assert check(client, "q-3")["approved"] is True
        metrics = client.get("/metrics").text
        assert 'risk_denials_total{reason="NO_QUOTE"}' in metrics
        assert 'risk_denials_total{reason="STALE_QUOTE"}' in metrics


def test_a_denial_is_in_the_response_the_span_the_log_and_the_metric(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    span_exporter: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with harness.run(create_service) as client:
        before = metric(client, 'risk_denials_total{reason="NO_QUOTE"}')
        with caplog.at_level(logging.WARNING, logger="microservices.risk-safety"):
            denied = check(client, "obs-1", symbol="SOLUSDT")
        assert (denied["approved"], denied["reason"]) == (False, "NO_QUOTE")
        (span,) = [
            s
            for s in span_exporter.get_finished_spans()
            if s.name == "risk.check" and s.attributes["client_order_id"] == "obs-1"
        ]
        assert (span.attributes["approved"], span.attributes["reason"]) == (False, "NO_QUOTE")
        (logged,) = [
            r._fields  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "order denied"
        ]
        assert (logged["reason"], logged["client_order_id"]) == ("NO_QUOTE", "obs-1")
        assert metric(client, 'risk_denials_total{reason="NO_QUOTE"}') == before + 1


def test_each_limit_denies_with_its_reason(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_ORDER_NOTIONAL", "1000")
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=12")
    # Each check reads as the stubs answer now (no background reads).
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    monkeypatch.setenv("RISK_MAX_GROSS_EXPOSURE", "2000")
    monkeypatch.setenv("RISK_MAX_ORDERS", "3")
    with harness.run(create_service) as client:
        tick(harness, client)
        tick(harness, client, "ETHUSDT", bid="10", ask="10")
        assert check(client, "n-1", quantity="11")["reason"] == "MAX_NOTIONAL"
        # The band is measured from risk's own ask, whatever price the caller sends.
        assert check(client, "b-1", limit_price="200", price="200")["reason"] == "PRICE_BAND"
        execution.holdings = {"BTCUSDT": "8"}
        assert check(client, "p-1", quantity="5", price="10")["reason"] == "MAX_POSITION"
        execution.holdings = {"BTCUSDT": "8", "ETHUSDT": "115"}  # 800 + 1 150
        assert check(client, "g-1", quantity="1")["reason"] == "MAX_GROSS_EXPOSURE"
        execution.holdings = {}
        assert check(client, "r-1")["approved"] is True
        assert check(client, "r-2")["approved"] is True
        assert check(client, "r-3")["approved"] is True
        rate = check(client, "r-4")
        assert (rate["approved"], rate["reason"]) == (False, "ORDER_RATE")
        assert rate["approval"] is None
        assert "3 orders in the last" in rate["detail"]

        denied = client.get("/decisions", params={"approved": False}).json()["data"]
        assert [d["reason"] for d in denied] == [
            "ORDER_RATE",
            "MAX_GROSS_EXPOSURE",
            "MAX_POSITION",
            "PRICE_BAND",
            "MAX_NOTIONAL",
        ]
        metrics = client.get("/metrics").text
        assert 'risk_denials_total{reason="MAX_NOTIONAL"}' in metrics


# --- what is in flight ---------------------------------------------------------------------------


def test_audit_f3_of_two_approved_buys_the_second_breaches_the_position_limit(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "ETHUSDT=1")
    with harness.run(create_service) as client:
        tick(harness, client, "ETHUSDT", bid="2000", ask="2000")
        first = check(client, "f3-1", symbol="ETHUSDT", quantity="0.9")
        assert first["approved"] is True
        second = check(client, "f3-2", symbol="ETHUSDT", quantity="0.9")
        assert (second["approved"], second["reason"]) == (False, "MAX_POSITION")
        assert "1.8" in second["detail"]
        # Execution has the first order now, working: it counts once, not twice.
        execution.work("f3-1", "BUY", "0.9", symbol="ETHUSDT")
        assert check(client, "f3-3", symbol="ETHUSDT", quantity="0.1")["approved"] is True
        assert check(client, "f3-4", symbol="ETHUSDT", quantity="0.01")["reason"] == "MAX_POSITION"
        # Execution is asked for every order it received since the oldest open approval.
        assert execution.since[-1] <= execution.since[0] + 60_000


def test_an_approval_counts_for_a_check_whose_exposure_was_read_before_execution_had_it(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "ETHUSDT=1")
    monkeypatch.setenv("RISK_READ_SHARE_MS", "0")  # B reads execution again, after A
    with harness.run(create_service) as client:
        tick(harness, client, "ETHUSDT", bid="2000", ask="2000")
        assert check(client, "race-x", symbol="ETHUSDT", quantity="0.9")["approved"] is True
        # Check A reads execution's exposure before execution has order race-x ...
        execution.hold_next_exposure = True
        late: dict[str, Any] = {}
        a = threading.Thread(
            target=lambda: late.update(check(client, "race-a", symbol="ETHUSDT", quantity="0.1"))
        )
        a.start()
        wait_until(execution.exposure_held.is_set, 10, "check A to read the exposure")
        # ... then execution receives race-x, and check B (reading after that) is decided first.
        execution.work("race-x", "BUY", "0.9", symbol="ETHUSDT")
        assert check(client, "race-b", symbol="ETHUSDT", quantity="0.05")["approved"] is True
        execution.exposure_release.set()
        a.join(10)
        # Holding 0, race-x 0.9 working, race-b 0.05 approved: A's 0.1 would make 1.05.
        assert (late["approved"], late["reason"]) == (False, "MAX_POSITION"), late


def test_a_recheck_of_the_same_client_order_id_replaces_its_earlier_approval(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "same", quantity="0.9")["approved"] is True
        assert check(client, "same", quantity="0.9")["approved"] is True
        assert check(client, "other", quantity="0.2")["reason"] == "MAX_POSITION"


def test_an_expired_approval_no_longer_counts(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    monkeypatch.setenv("RISK_APPROVAL_TTL_MS", "300")
    # Each check reads as the stubs answer now (no background reads).
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    with harness.run(create_service) as client:
        tick(harness, client)
        first = check(client, "e-1", quantity="0.9")
        assert first["approved"] is True
        expires = first["approval"]["expires_ms"]
        wait_until(lambda: now_ms() > expires, 5, "the approval to expire")
        tick(harness, client, bid="100", ask="100.01")
        assert check(client, "e-2", quantity="0.9")["approved"] is True


def test_unexpired_approvals_still_count_after_a_restart(
    harness: ServiceHarness,
    database: str,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    monkeypatch.setenv("RISK_APPROVAL_TTL_MS", "60000")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "x-1", quantity="0.6", reduce_only=False)["approved"] is True
    with harness.run(create_service) as client:
        tick(harness, client, bid="100", ask="100.01")
        again = check(client, "x-2", quantity="0.6")
        assert (again["approved"], again["reason"]) == (False, "MAX_POSITION")


def test_working_orders_at_execution_count_toward_the_limits(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=1")
    execution.holdings = {"BTCUSDT": "0.5"}
    execution.work("w-1", "BUY", "0.4")
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "w-2", quantity="0.1")["approved"] is True
        assert check(client, "w-3", quantity="0.01")["reason"] == "MAX_POSITION"


def test_a_reduce_only_order_must_reduce_after_everything_in_flight_on_its_side(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    execution.holdings = {"BTCUSDT": "3"}
    execution.work("ro-0", "SELL", "2", reduce_only=True)
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "ro-1", side="SELL", quantity="0.6", reduce_only=True)["approved"]
        # 2 working + 0.6 approved + 0.5 would be 3.1 of a 3 position: a flip.
        flip = check(client, "ro-2", side="SELL", quantity="0.5", reduce_only=True)
        assert (flip["approved"], flip["reason"]) == (False, "INVALID_ORDER")
        assert check(client, "ro-3", side="SELL", quantity="0.4", reduce_only=True)["approved"]
        assert (
            check(client, "ro-4", side="BUY", quantity="0.1", reduce_only=True)["approved"] is False
        )


def test_fails_closed_when_executions_exposure_is_unreachable_or_missing(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execution.holdings = {"BTCUSDT": "3"}
    execution.exposure_status = 404  # an execution without GET /exposure
    with harness.run(create_service) as client:
        tick(harness, client)
        missing = check(client, "u-1")
        assert (missing["approved"], missing["reason"]) == (False, "EXPOSURE_UNAVAILABLE")
        assert "404" in missing["detail"]
        exit_order = check(client, "u-2", side="SELL", quantity="1", reduce_only=True)
        assert exit_order["reason"] == "EXPOSURE_UNAVAILABLE"
    monkeypatch.setenv("EXECUTION_URL", f"http://127.0.0.1:{free_port()}")
    with harness.run(create_service) as client:
        tick(harness, client)
        down = check(client, "u-3")
        assert (down["approved"], down["reason"]) == (False, "EXPOSURE_UNAVAILABLE")
        assert "ConnectError" in down["detail"]
        assert client.get("/state").json()["exposure"]["reachable"] is False
        assert metric(client, "risk_execution_exposure_reachable") == 0.0


# --- portfolio freshness -------------------------------------------------------------------------


def test_fails_closed_when_the_portfolio_is_unreachable_or_stale(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_PORTFOLIO_AGE_MS", "5000")
    with harness.run(create_service) as client:
        tick(harness, client)
        portfolio.age_ms = 60_000
        stale = check(client, "f-1")
        assert (stale["approved"], stale["reason"]) == (False, "STALE_PORTFOLIO")
        assert "ms old" in stale["detail"]

    monkeypatch.setenv("PORTFOLIO_INTELLIGENCE_URL", f"http://127.0.0.1:{free_port()}")
    with harness.run(create_service) as client:
        tick(harness, client)
        down = check(client, "f-2")
        assert (down["approved"], down["reason"]) == (False, "STALE_PORTFOLIO")
        assert down["detail"].startswith("portfolio unavailable: ConnectError")
        state = client.get("/state").json()
        assert state["portfolio"]["reachable"] is False
        # Still ready: it answers every check, with a denial, which is what callers need.
        assert client.get("/health/ready").status_code == 200


def test_a_portfolio_that_lost_a_fill_is_stale_even_when_its_marks_are_fresh(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each check reads as the stubs answer now (no background reads).
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    with harness.run(create_service) as client:
        tick(harness, client)
        del portfolio.body["fills"]  # a portfolio that cannot say
        assert check(client, "s-1")["reason"] == "STALE_PORTFOLIO"
        portfolio.reset()
        portfolio.fills(dead_letters=1)
        dead = check(client, "s-2", side="SELL", quantity="1", reduce_only=True)
        assert (dead["reason"], "dead-lettered" in dead["detail"]) == ("STALE_PORTFOLIO", True)
        portfolio.reset()
        portfolio.fills(booked_sequence=4, max_sequence=6, gaps=[5])
        assert check(client, "s-3")["reason"] == "STALE_PORTFOLIO"
        portfolio.reset()
        assert check(client, "s-4")["approved"] is True


def test_a_portfolio_behind_executions_fills_for_longer_than_the_max_lag_is_stale(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_FILL_LAG_MS", "300")
    monkeypatch.setenv("RISK_MAX_ORDERS", "100000")
    # Each check reads as the stubs answer now (no background reads).
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    with harness.run(create_service) as client:
        tick(harness, client)
        execution.fill_sequence = 10
        portfolio.fills(booked_sequence=8, max_sequence=8)
        # Behind, but not for long yet.
        assert check(client, "l-0", quantity="0.001")["approved"] is True
        n = iter(range(1, 10_000))
        stale = wait_until(
            lambda: (
                (r := check(client, f"l-{next(n)}", quantity="0.001"))["reason"]
                == "STALE_PORTFOLIO"
                and r
            ),
            10,
            "the lag to exceed 300 ms",
        )
        assert "behind execution's fills" in stale["detail"]
        portfolio.fills(booked_sequence=10, max_sequence=10)
        assert check(client, "l-caught-up", quantity="0.001")["approved"] is True


# --- the trading state, its epoch and the push to execution ---------------------------------


def test_the_kill_switch_reaches_execution_before_it_answers_and_before_the_state_shows_it(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    execution.canceled = ["resting-1"]
    with harness.run(create_service) as client:
        before = client.get("/state").json()
        assert (before["state"], before["epoch"]) == ("ACTIVE", 0)
        execution.release.clear()
        answer: dict[str, Any] = {}

        def halt() -> None:
            response = client.post("/kill-switch", json={"operator": "alice", "reason": "drill"})
            answer["at_ns"] = time.monotonic_ns()
            answer["body"] = response.json()

        halting = threading.Thread(target=halt)
        halting.start()
        wait_until(lambda: execution.pushes, 10, "the push to reach execution")
        # Execution is adopting HALTED; risk-safety does not show it yet.
        during = client.get("/state").json()
        assert (during["state"], during["epoch"]) == ("ACTIVE", 0)
        assert not harness.published("risk.state_changed")
        execution.release.set()
        halting.join(10)

        (push,) = execution.pushes
        assert (push["state"], push["epoch"], push["reason"]) == ("HALTED", 1, "drill")
        assert verify_state(DEVELOPMENT_SECRET, SignedState("HALTED", 1, push["token"]))
        assert execution.push_arrived_ns[0] < answer["at_ns"]
        body = answer["body"]
        assert (body["state"], body["epoch"], body["changed"]) == ("HALTED", 1, True)
        assert body["execution"] == {"acknowledged": True, "canceled": ["resting-1"], "error": None}
        after = client.get("/state").json()
        assert (after["state"], after["epoch"]) == ("HALTED", 1)
        assert verify_state(DEVELOPMENT_SECRET, SignedState("HALTED", 1, after["state_token"]))
        assert [c["state"] for c in harness.published("risk.state_changed")] == ["HALTED"]


def test_a_kill_switch_halts_even_when_execution_is_down_and_counts_the_failed_push(
    harness: ServiceHarness, portfolio: PortfolioStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTION_URL", f"http://127.0.0.1:{free_port()}")
    with harness.run(create_service) as client:
        failures = metric(client, "risk_state_push_failures_total")
        halted = client.post("/kill-switch", json={"operator": "alice", "reason": "venue down"})
        assert halted.status_code == 200
        body = halted.json()
        assert (body["state"], body["epoch"]) == ("HALTED", 1)
        assert body["execution"]["acknowledged"] is False
        assert body["execution"]["error"].startswith("ConnectError")
        assert client.get("/state").json()["state"] == "HALTED"
        assert metric(client, "risk_state_push_failures_total") == failures + 1
        assert metric(client, "risk_state_push_duration_seconds_count") >= 1


def test_kill_switch_halts_only_reducing_orders_pass_and_resume_is_audited(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    execution.holdings = {"BTCUSDT": "3"}
    with harness.run(create_service) as client:
        tick(harness, client)
        old = check(client, "k-0")
        assert old["approval"]["epoch"] == 0
        halted = client.post("/kill-switch", json={"operator": "alice", "reason": "bad fills"})
        assert halted.status_code == 200
        assert (halted.json()["state"], halted.json()["changed"]) == ("HALTED", True)

        assert check(client, "k-1")["reason"] == "HALTED"
        exit_order = check(client, "k-2", side="SELL", quantity="2", reduce_only=True)
        assert exit_order["approved"] is True
        assert exit_order["approval"]["epoch"] == 1
        too_big = check(client, "k-3", side="SELL", quantity="5", reduce_only=True)
        assert too_big["approved"] is False

        # Halting again changes nothing but tells execution again.
        again = client.post("/kill-switch", json={"operator": "alice", "reason": "again"}).json()
        assert (again["changed"], again["epoch"], again["execution"]["acknowledged"]) == (
            False,
            1,
            True,
        )

        assert client.post("/resume", json={"reason": "fixed"}).status_code == 422
        resumed = client.post("/resume", json={"operator": "bob", "reason": "venue fixed"})
        assert (resumed.json()["state"], resumed.json()["epoch"]) == ("ACTIVE", 2)
        assert check(client, "k-4")["approval"]["epoch"] == 2
        assert [(p["state"], p["epoch"]) for p in execution.pushes] == [
            ("HALTED", 1),
            ("HALTED", 1),
            ("ACTIVE", 2),
        ]

        audit = client.get("/state/changes").json()["data"]
        assert [(a["from_state"], a["state"], a["actor"], a["reason"]) for a in audit] == [
            ("HALTED", "ACTIVE", "bob", "venue fixed"),
            ("ACTIVE", "HALTED", "alice", "bad fills"),
        ]


def test_loss_limits_move_the_trading_state_and_push_it_to_execution(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISK_MAX_DAILY_LOSS", "1000")
    monkeypatch.setenv("RISK_MAX_DRAWDOWN", "0.05")
    # Each check reads as the stubs answer now (no background reads).
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    with harness.run(create_service) as client:
        tick(harness, client)
        portfolio.reset(equity="98500", daily_pnl="-1500")
        result = check(client, "l-1")
        assert (result["reason"], result["state"]) == ("DAILY_LOSS", "REDUCING")
        portfolio.reset(equity="94000", peak_equity="100000", daily_pnl="-600")
        result = check(client, "l-2")
        # Denied for the state it was checked in; the drawdown then halts trading.
        assert (result["reason"], result["state"]) == ("REDUCING_ONLY", "HALTED")
        assert check(client, "l-3")["reason"] == "HALTED"
        assert client.get("/state").json()["state"] == "HALTED"
        changes = harness.published("risk.state_changed")
        assert [(c["previous_state"], c["state"]) for c in changes] == [
            ("ACTIVE", "REDUCING"),
            ("REDUCING", "HALTED"),
        ]
        assert [(p["state"], p["epoch"]) for p in execution.pushes] == [
            ("REDUCING", 1),
            ("HALTED", 2),
        ]
        audit = client.get("/state/changes").json()["data"]
        assert [a["actor"] for a in audit] == ["risk-safety", "risk-safety"]
        assert audit[0]["reason"].startswith("DRAWDOWN")


def test_the_trading_state_and_its_epoch_survive_a_restart(
    harness: ServiceHarness, database: str, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    with harness.run(create_service) as client:
        client.post("/kill-switch", json={"operator": "alice", "reason": "lunch"})
        client.post("/resume", json={"operator": "alice", "reason": "back"})
        client.post("/kill-switch", json={"operator": "alice", "reason": "end of day"})
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["reason"], state["epoch"]) == ("HALTED", "end of day", 3)
        assert verify_state(DEVELOPMENT_SECRET, SignedState("HALTED", 3, state["state_token"]))
        tick(harness, client)
        assert check(client, "s-1")["reason"] == "HALTED"
        resumed = client.post("/resume", json={"operator": "bob", "reason": "morning"}).json()
        assert resumed["epoch"] == 4
        assert execution.pushes[-1]["epoch"] == 4
