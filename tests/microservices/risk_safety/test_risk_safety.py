"""risk-safety through its HTTP API, reading a real HTTP portfolio: limits, state, fail-closed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.trading.approval import DEVELOPMENT_SECRET, Approval, verify_approval
from backend.trading.types import ClientOrderId, OrderRequest, Side, Symbol
from microservices.risk_safety.service import create_service
from tests.microservices.conftest import ServiceHarness
from tests.support.procs import free_port


class PortfolioStub:
    """A real HTTP server answering GET /portfolio with `body` (as_of_ms = now unless set)."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.age_ms = 0
        self.reset()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = {**stub.body, "as_of_ms": time.time_ns() // 1_000_000 - stub.age_ms}
                payload = json.dumps(body).encode()
                self.send_response(200 if self.path == "/portfolio" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self, **changes: Any) -> None:
        self.body = {
            "equity": "100000",
            "peak_equity": "100000",
            "daily_pnl": "0",
            "gross_exposure": "0",
            "positions": [],
            **changes,
        }


@pytest.fixture
def portfolio(monkeypatch: pytest.MonkeyPatch) -> Iterator[PortfolioStub]:
    stub = PortfolioStub()
    monkeypatch.setenv("PORTFOLIO_INTELLIGENCE_URL", stub.url)
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def check(
    client: TestClient,
    cid: str,
    *,
    side: str = "BUY",
    quantity: str = "1",
    price: str = "100",
    reduce_only: bool = False,
    limit_price: str | None = None,
) -> dict[str, Any]:
    response = client.post(
        "/check",
        json={
            "client_order_id": cid,
            "symbol": "BTCUSDT",
            "side": side,
            "quantity": quantity,
            "price": price,
            "order_type": "LIMIT" if limit_price else "MARKET",
            "limit_price": limit_price,
            "reduce_only": reduce_only,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_an_approval_is_signed_for_the_order_persisted_and_published(
    harness: ServiceHarness, portfolio: PortfolioStub
) -> None:
    with harness.run(create_service) as client:
        result = check(client, "ok-1", quantity="2.50")
        assert result["approved"] is True
        assert result["reason"] == "APPROVED"
        assert result["state"] == "ACTIVE"
        approval = result["approval"]
        assert approval["decision_id"] == result["decision_id"]
        verify_approval(
            DEVELOPMENT_SECRET,
            Approval(
                approval["decision_id"],
                approval["token"],
                approval["expires_ms"],
                approval["epoch"],
            ),
            order=OrderRequest(ClientOrderId("ok-1"), Symbol("BTCUSDT"), Side.BUY, Decimal("2.5")),
            now_ms=time.time_ns() // 1_000_000,
        )
        decisions = client.get("/decisions").json()["data"]
        assert [(d["decision_id"], d["reason"]) for d in decisions] == [
            (result["decision_id"], "APPROVED")
        ]
        assert decisions[0]["trace_id"]
        published = harness.published("risk.decision")
        assert [(e["client_order_id"], e["approved"]) for e in published] == [("ok-1", True)]


def test_each_limit_denies_with_its_reason(
    harness: ServiceHarness, portfolio: PortfolioStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_MAX_ORDER_NOTIONAL", "1000")
    monkeypatch.setenv("RISK_POSITION_LIMITS", "BTCUSDT=12")
    monkeypatch.setenv("RISK_MAX_GROSS_EXPOSURE", "2000")
    monkeypatch.setenv("RISK_MAX_ORDERS", "3")
    with harness.run(create_service) as client:
        assert check(client, "n-1", quantity="11")["reason"] == "MAX_NOTIONAL"
        assert check(client, "b-1", limit_price="200")["reason"] == "PRICE_BAND"
        portfolio.reset(positions=[{"symbol": "BTCUSDT", "quantity": "8"}])
        assert check(client, "p-1", quantity="5", price="10")["reason"] == "MAX_POSITION"
        portfolio.reset(gross_exposure="1950")
        assert check(client, "g-1", quantity="1")["reason"] == "MAX_GROSS_EXPOSURE"
        portfolio.reset()
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


def test_loss_limits_move_the_trading_state(
    harness: ServiceHarness, portfolio: PortfolioStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_MAX_DAILY_LOSS", "1000")
    monkeypatch.setenv("RISK_MAX_DRAWDOWN", "0.05")
    with harness.run(create_service) as client:
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
        audit = client.get("/state/changes").json()["data"]
        assert [a["actor"] for a in audit] == ["risk-safety", "risk-safety"]
        assert audit[0]["reason"].startswith("DRAWDOWN")


def test_kill_switch_halts_only_reducing_orders_pass_and_resume_is_audited(
    harness: ServiceHarness, portfolio: PortfolioStub
) -> None:
    portfolio.reset(positions=[{"symbol": "BTCUSDT", "quantity": "3"}])
    with harness.run(create_service) as client:
        halted = client.post("/kill-switch", json={"operator": "alice", "reason": "bad fills"})
        assert halted.status_code == 200
        assert (halted.json()["state"], halted.json()["changed"]) == ("HALTED", True)

        assert check(client, "k-1")["reason"] == "HALTED"
        exit_order = check(client, "k-2", side="SELL", quantity="2", reduce_only=True)
        assert exit_order["approved"] is True
        assert exit_order["approval"] is not None
        too_big = check(client, "k-3", side="SELL", quantity="5", reduce_only=True)
        assert too_big["approved"] is False

        assert client.post("/resume", json={"reason": "fixed"}).status_code == 422
        resumed = client.post("/resume", json={"operator": "bob", "reason": "venue fixed"})
        assert resumed.json()["state"] == "ACTIVE"
        assert check(client, "k-4")["approved"] is True

        audit = client.get("/state/changes").json()["data"]
        assert [(a["from_state"], a["state"], a["actor"], a["reason"]) for a in audit] == [
            ("HALTED", "ACTIVE", "bob", "venue fixed"),
            ("ACTIVE", "HALTED", "alice", "bad fills"),
        ]


def test_the_trading_state_survives_a_restart(
    harness: ServiceHarness, portfolio: PortfolioStub
) -> None:
    with harness.run(create_service) as client:
        client.post("/kill-switch", json={"operator": "alice", "reason": "end of day"})
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["reason"]) == ("HALTED", "end of day")
        assert check(client, "s-1")["reason"] == "HALTED"


def test_fails_closed_when_the_portfolio_is_unreachable_or_stale(
    harness: ServiceHarness, portfolio: PortfolioStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_MAX_PORTFOLIO_AGE_MS", "5000")
    with harness.run(create_service) as client:
        portfolio.age_ms = 60_000
        stale = check(client, "f-1")
        assert (stale["approved"], stale["reason"]) == (False, "STALE_PORTFOLIO")
        assert "ms old" in stale["detail"]

    monkeypatch.setenv("PORTFOLIO_INTELLIGENCE_URL", f"http://127.0.0.1:{free_port()}")
    with harness.run(create_service) as client:
        down = check(client, "f-2")
        assert (down["approved"], down["reason"]) == (False, "STALE_PORTFOLIO")
        assert down["detail"].startswith("portfolio unavailable: ConnectError")
        state = client.get("/state").json()
        assert state["portfolio"]["reachable"] is False
        # Still ready: it answers every check, with a denial, which is what callers need.
        assert client.get("/health/ready").status_code == 200
