"""execution enforces the trading state: pushed, polled, and on a lease that fails closed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.trading.approval import sign_state
from tests.microservices.execution.conftest import (
    RiskStub,
    metric,
    now_ms,
    push,
    risk_state,
    running,
)
from tests.microservices.execution.test_execution import order, send_tick, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def status_of(client: TestClient, cid: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/orders/{cid}").json()
    return body


def cross_then_sentinel(
    harness: ServiceHarness, client: TestClient, *crossing: tuple[str, str]
) -> None:
    """Publish ticks (bid, ask) crossing the resting orders, then a sentinel tick of another
    symbol, and wait for the sentinel: the crossing ticks have then been handled."""
    harness.publish(*(tick(bid=bid, ask=ask) for bid, ask in crossing))
    send_tick(harness, client, symbol="SENTINEL", bid=str(now_ms() % 1000 + 1), ask="10000")


def hold_btc(harness: ServiceHarness, client: TestClient, quantity: str = "2") -> None:
    """Buy `quantity` BTCUSDT while trading is open, to have something to reduce later."""
    send_tick(harness, client)
    bought = client.post("/orders", json=order("hold-1", quantity=quantity))
    assert bought.json()["status"] == "FILLED", bought.text


def test_an_approval_issued_before_a_pushed_halt_is_refused_as_revoked(
    harness: ServiceHarness, risk: RiskStub
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        before_halt = order("pre-halt-1", epoch=0)

        pushed = push(client, risk, "HALTED")
        assert pushed.status_code == 200, pushed.text
        assert pushed.json() == {"state": "HALTED", "epoch": 1, "canceled": []}

        refused = client.post("/orders", json=before_halt)
        assert refused.status_code == 403
        assert "revokes" in refused.json()["detail"] and "epoch 0" in refused.json()["detail"]

        # A resume is a state change too: approvals of every earlier epoch stay void.
        assert push(client, risk, "ACTIVE").json() == {
            "state": "ACTIVE",
            "epoch": 2,
            "canceled": [],
        }
        assert client.post("/orders", json=before_halt).status_code == 403
        assert client.post("/orders", json=order("post-resume-1", epoch=2)).status_code == 201
        assert client.get("/orders").json()["count"] == 1
        assert 'execution_approval_refusals_total{problem="REVOKED"}' in client.get("/metrics").text


def test_a_pushed_halt_cancels_a_resting_buy_which_later_ticks_never_fill(
    harness_database: ServiceHarness, risk: RiskStub
) -> None:
    with running(harness_database) as client:
        send_tick(harness_database, client)
        resting = client.post(
            "/orders", json=order("rest-1", order_type="LIMIT", limit_price="99.00")
        )
        assert resting.json()["status"] == "ACCEPTED"

        pushed = push(client, risk, "HALTED")
        assert pushed.json() == {"state": "HALTED", "epoch": 1, "canceled": ["rest-1"]}
        canceled = status_of(client, "rest-1")
        assert canceled["status"] == "CANCELED"
        assert canceled["reason"] == "trading state HALTED (epoch 1)"
        assert Decimal(client.get("/account").json()["reserved_cash"]) == 0
        wait_until(
            lambda: (
                [e["client_order_id"] for e in harness_database.published("order.canceled")]
                == ["rest-1"]
            ),
            what="order.canceled through the outbox",
        )

        cross_then_sentinel(harness_database, client, ("98.00", "98.50"))
        assert status_of(client, "rest-1")["fills"] == []
        assert harness_database.published("order.filled") == []

        # Pushing the same state again changes nothing.
        again = client.post("/risk/state", json=risk.push_body())
        assert again.json() == {"state": "HALTED", "epoch": 1, "canceled": []}


def test_while_halted_only_reduce_only_sells_are_accepted_and_filled(
    harness: ServiceHarness, risk: RiskStub
) -> None:
    with running(harness) as client:
        hold_btc(harness, client, quantity="3")
        exit_order = order(
            "exit-1",
            side="SELL",
            order_type="LIMIT",
            limit_price="101.00",
            reduce_only=True,
            quantity="1",
        )
        assert client.post("/orders", json=exit_order).json()["status"] == "ACCEPTED"

        refusals = metric(client, "execution_risk_refusals_total", state="HALTED")
        pushed = push(client, risk, "HALTED")
        assert pushed.json()["canceled"] == []  # the reduce-only exit keeps working

        epoch = risk.epoch
        buy = client.post("/orders", json=order("halted-buy", epoch=epoch))
        assert buy.status_code == 403
        assert "trading state is HALTED (epoch 1)" in buy.json()["detail"]
        plain_sell = client.post("/orders", json=order("halted-sell", side="SELL", epoch=epoch))
        assert plain_sell.status_code == 403
        # A reduce-only BUY cannot reduce anything on a spot venue (holdings are never short).
        ro_buy = client.post("/orders", json=order("halted-ro-buy", reduce_only=True, epoch=epoch))
        assert ro_buy.status_code == 403

        ro_sell = client.post(
            "/orders", json=order("halted-exit", side="SELL", reduce_only=True, epoch=epoch)
        )
        assert ro_sell.status_code == 201, ro_sell.text
        assert ro_sell.json()["status"] == "FILLED"

        send_tick(harness, client, bid="101.50", ask="101.60")
        wait_until(lambda: status_of(client, "exit-1")["status"] == "FILLED", what="the exit")
        assert client.get("/account").json()["holdings"][0]["quantity"] == "1"
        assert metric(client, "execution_risk_refusals_total", state="HALTED") == refusals + 3
        assert metric(client, "execution_risk_state", state="HALTED") == 1
        assert metric(client, "execution_risk_state", state="ACTIVE") == 0


def test_the_poller_alone_halts_execution_within_the_poll_interval(
    harness: ServiceHarness, risk: RiskStub
) -> None:
    poll_ms, poll_timeout_ms = 100, 1000  # the fixture's EXECUTION_RISK_POLL_MS, the default
    with running(harness) as client:
        send_tick(harness, client)
        client.post("/orders", json=order("rest-p", order_type="LIMIT", limit_price="99.00"))

        risk.change("HALTED")  # no push: execution has to find out by itself
        seen = wait_until(
            lambda: (s := risk_state(client))["state"] == "HALTED" and s, what="the poll"
        )
        assert seen["epoch"] == 1 and seen["source"] == "poll"
        # The design bound: the next poll, at most one interval later, plus its own timeout.
        assert seen["adopted_at_ms"] - risk.changed_at_ms <= poll_ms + poll_timeout_ms
        # The adoption closes trading at once; the cancel of the working buy follows under the
        # desk's lock, so its status is read once that has run.
        canceled = wait_until(
            lambda: (s := status_of(client, "rest-p"))["status"] == "CANCELED" and s,
            timeout_s=2.0,
            what="the working buy to be canceled",
        )
        assert canceled["fills"] == []
        assert client.post("/orders", json=order("late", epoch=1)).status_code == 403


def test_without_risk_safety_the_lease_lapses_and_only_reduce_only_orders_trade(
    harness: ServiceHarness, risk: RiskStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTION_RISK_LEASE_MS", "1500")
    with running(harness) as client:
        hold_btc(harness, client)
        client.post("/orders", json=order("frozen-buy", order_type="LIMIT", limit_price="99.00"))
        exit_order = order(
            "lease-exit", side="SELL", order_type="LIMIT", limit_price="101.00", reduce_only=True
        )
        client.post("/orders", json=exit_order)

        risk.failing = True  # risk-safety answers 503 from now on
        lapsed = wait_until(
            lambda: (s := risk_state(client))["lease_expired"] and s, what="the lease to lapse"
        )
        assert lapsed["state"] == "ACTIVE" and lapsed["accepts"] == "REDUCE_ONLY"
        assert "past its 1500 ms lease" in lapsed["blocker"]

        refused = client.post("/orders", json=order("no-lease"))
        assert refused.status_code == 403
        assert "trading state UNKNOWN" in refused.json()["detail"]

        # Ticks crossing both: the reduce-only exit fills; the buy stays working, unfilled.
        cross_then_sentinel(harness, client, ("101.50", "101.60"), ("98.40", "98.50"))
        assert status_of(client, "lease-exit")["status"] == "FILLED"
        frozen = status_of(client, "frozen-buy")
        assert frozen["status"] == "ACCEPTED" and frozen["fills"] == []
        assert metric(client, "execution_risk_state", state="UNKNOWN") == 1
        assert metric(client, "execution_risk_state", state="ACTIVE") == 0
        assert metric(client, "execution_risk_poll_failures_total", error="http_503") > 0

        # Risk-safety back, still ACTIVE in the same epoch: the held buy matches again.
        risk.failing = False
        wait_until(lambda: risk_state(client)["accepts"] == "ALL", what="the lease to renew")
        harness.publish(tick(bid="98.40", ask="98.50"))
        wait_until(lambda: status_of(client, "frozen-buy")["status"] == "FILLED", what="the buy")


def test_execution_fails_closed_until_risk_safety_signs_its_state(
    harness: ServiceHarness, risk: RiskStub
) -> None:
    risk.signed = False  # a risk-safety that serves no epoch or state_token
    with running(harness, open_=False) as client:
        wait_until(lambda: risk.polls >= 2, what="two polls")
        state = risk_state(client)
        assert state["state"] is None and state["accepts"] == "REDUCE_ONLY"
        assert "no verified state" in state["blocker"]
        send_tick(harness, client)
        refused = client.post("/orders", json=order("unverified"))
        assert refused.status_code == 403
        assert "trading state UNKNOWN" in refused.json()["detail"]
        assert metric(client, "execution_risk_poll_failures_total", error="unverified") > 0
        assert metric(client, "execution_risk_lease_age_seconds") == float("inf")
        assert metric(client, "execution_risk_epoch") == -1

        risk.signed = True
        wait_until(lambda: risk_state(client)["accepts"] == "ALL", what="the signed state")
        assert client.post("/orders", json=order("verified")).status_code == 201


def test_a_signed_state_is_adopted_only_with_a_higher_epoch(
    harness: ServiceHarness, risk: RiskStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTION_RISK_LEASE_MS", "1000")
    with running(harness) as client:
        invalid = metric(
            client, "execution_risk_state_updates_total", source="push", outcome="invalid"
        )
        forged = risk.push_body(risk.next("ACTIVE"))
        forged["token"] = "0" * 64
        assert client.post("/risk/state", json=forged).status_code == 403

        secret = risk.secret
        halted = sign_state(secret, state="HALTED", epoch=5)
        assert client.post("/risk/state", json=risk.push_body(halted)).status_code == 200
        # An old ACTIVE state cannot be replayed, nor the same epoch with another state.
        for state, epoch in (("ACTIVE", 4), ("ACTIVE", 5)):
            replay = risk.push_body(sign_state(secret, state=state, epoch=epoch))
            response = client.post("/risk/state", json=replay)
            assert response.status_code == 409, (state, epoch)
            assert "execution enforces HALTED in epoch 5" in response.json()["detail"]
        assert risk_state(client)["state"] == "HALTED"
        # The stub still serves epoch 0: polls are stale and renew nothing.
        wait_until(lambda: risk_state(client)["lease_expired"], 5, "the lease to lapse")
        updates = "execution_risk_state_updates_total"
        assert metric(client, updates, source="poll", outcome="stale") > 0
        assert metric(client, updates, source="push", outcome="invalid") == invalid + 1
        assert metric(client, "execution_risk_epoch") == 5

        for bad in (
            {"state": "HALTED", "epoch": -1, "token": "x"},
            {"state": "HALTED", "epoch": 10**30, "token": "x"},
            {"state": "halted; drop", "epoch": 1, "token": "x"},
            {"state": "HALTED", "epoch": "1e999999", "token": "x"},
            {"state": "HALTED", "epoch": 1},
        ):
            response = client.post("/risk/state", json=bad)
            assert response.status_code == 422, (bad, response.text)


def test_exposure_reads_holdings_working_orders_fills_and_received_ids_in_one_view(
    harness_database: ServiceHarness, risk: RiskStub
) -> None:
    with running(harness_database) as client:
        empty = client.get("/exposure").json()
        assert empty["fill_sequence"] == 0 and empty["holdings"] == {} and empty["working"] == []
        assert (empty["risk_state"], empty["risk_epoch"]) == ("ACTIVE", 0)

        hold_btc(harness_database, client, quantity="2")
        since = now_ms()
        client.post(
            "/orders",
            json=order("x-sell", side="SELL", order_type="LIMIT", limit_price="105.5"),
        )
        client.post("/orders", json=order("x-buy", order_type="LIMIT", limit_price="90"))
        client.post("/orders", json=order("x-rej", symbol="ETHUSDT"))  # no quote: rejected
        client.post("/orders", json=order("x-refused", quantity="1", approve=False))  # 403

        view = client.get("/exposure", params={"since_ms": since}).json()
        filled = client.get("/orders/hold-1").json()["fills"][0]
        assert view["fill_sequence"] == filled["sequence"]
        assert view["holdings"] == {"BTCUSDT": "2"}  # reserved for the sell included
        assert view["working"] == [
            {
                "client_order_id": "x-sell",
                "symbol": "BTCUSDT",
                "side": "SELL",
                "order_type": "LIMIT",
                "limit_price": "105.5",
                "remaining_quantity": "1",
                "reduce_only": False,
            },
            {
                "client_order_id": "x-buy",
                "symbol": "BTCUSDT",
                "side": "BUY",
                "order_type": "LIMIT",
                "limit_price": "90",
                "remaining_quantity": "1",
                "reduce_only": False,
            },
        ]
        assert view["client_order_ids_since"] == ["x-sell", "x-buy", "x-rej"]
        assert since <= view["as_of_ms"] <= now_ms()
        assert client.get("/exposure", params={"since_ms": 0}).json()["client_order_ids_since"] == [
            "hold-1",
            "x-sell",
            "x-buy",
            "x-rej",
        ]
        for bad in ("-1", "1e999999", "soon"):
            assert client.get("/exposure", params={"since_ms": bad}).status_code == 422

        push(client, risk, "HALTED")
        halted = client.get("/exposure").json()
        assert (halted["risk_state"], halted["risk_epoch"]) == ("HALTED", 1)
        assert halted["working"] == []  # both limits were canceled by the halt
