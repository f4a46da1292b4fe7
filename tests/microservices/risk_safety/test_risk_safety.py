"""risk-safety over real HTTP, Redis and a database, against real HTTP stubs of its neighbours.

The portfolio stub answers `GET /portfolio` (contract C4), the execution stub answers
`GET /exposure` (C3) and records every `POST /risk/state` push (C2); quotes arrive as real
`MarketTick` events on the bus.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from backend.infra.eventbus import MarketTick
from backend.trading.approval import (
    DEVELOPMENT_SECRET,
    Approval,
    SignedState,
    verify_approval,
    verify_state,
)
from backend.trading.types import ClientOrderId, OrderRequest, Side, Symbol
from microservices.risk_safety.service import create_service
from tests.microservices.conftest import ServiceHarness, wait_for
from tests.support.postgres import scratch_database
from tests.support.procs import free_port


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class JsonStub:
    """A real HTTP server on a free port; subclasses answer in `answer`."""

    def __init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, payload = stub.answer(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PortfolioStub(JsonStub):
    """GET /portfolio with `body`; as_of_ms = now - age_ms; `fills` complete unless changed."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.age_ms = 0
        self.reset()
        super().__init__()

    def reset(self, **changes: Any) -> None:
        self.body = {
            "equity": "100000",
            "peak_equity": "100000",
            "daily_pnl": "0",
            "gross_exposure": "0",
            "positions": [],
            "fills": {
                "booked_sequence": 0,
                "max_sequence": 0,
                "gaps": [],
                "pending": 0,
                "lag": 0,
                "dead_letters": 0,
                "complete_as_of_ms": None,
            },
            **changes,
        }

    def fills(self, **changes: Any) -> None:
        self.body["fills"] = {**self.body["fills"], **changes}

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path != "/portfolio":
            return 404, {"detail": "Not Found"}
        return 200, {**self.body, "as_of_ms": now_ms() - self.age_ms}


class ExecutionStub(JsonStub):
    """GET /exposure as execution would answer it; records each POST /risk/state push.

    A push is held until `release` is set, so a test can look at risk-safety while
    execution is still adopting the state.
    """

    def __init__(self) -> None:
        self.holdings: dict[str, str] = {}
        self.working: list[dict[str, Any]] = []
        self.received: list[str] = []
        self.fill_sequence = 0
        self.exposure_status = 200
        self.since: list[int] = []
        self.pushes: list[dict[str, Any]] = []
        self.push_arrived_ns: list[int] = []
        self.canceled: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.epoch = 0
        # Set `hold_next_exposure` to make the next GET /exposure read its answer, then wait
        # for `exposure_release` before sending it (an answer delayed in the network).
        self.hold_next_exposure = False
        self.exposure_held = threading.Event()
        self.exposure_release = threading.Event()
        super().__init__()

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        url = urlparse(path)
        if method == "GET" and url.path == "/exposure" and self.exposure_status == 200:
            self.since.append(int(parse_qs(url.query)["since_ms"][0]))
            answer = {
                "as_of_ms": now_ms(),
                "fill_sequence": self.fill_sequence,
                "risk_state": None,
                "risk_epoch": None,
                "holdings": dict(self.holdings),
                "working": list(self.working),
                "client_order_ids_since": list(self.received),
            }
            if self.hold_next_exposure:
                self.hold_next_exposure = False
                self.exposure_held.set()
                self.exposure_release.wait(10)
            return 200, answer
        if method == "POST" and url.path == "/risk/state":
            self.push_arrived_ns.append(time.monotonic_ns())
            self.pushes.append(body)
            self.release.wait(10)
            if not verify_state(
                DEVELOPMENT_SECRET, SignedState(body["state"], body["epoch"], body["token"])
            ):
                return 403, {"detail": "bad signature"}
            self.epoch = max(self.epoch, body["epoch"])
            return 200, {"state": body["state"], "epoch": body["epoch"], "canceled": self.canceled}
        return (self.exposure_status if url.path == "/exposure" else 404), {"detail": "nope"}

    def work(
        self, cid: str, side: str, quantity: str, *, symbol: str = "BTCUSDT", **kw: Any
    ) -> None:
        self.working.append(
            {
                "client_order_id": cid,
                "symbol": symbol,
                "side": side,
                "order_type": "LIMIT",
                "limit_price": "100",
                "remaining_quantity": quantity,
                "reduce_only": kw.get("reduce_only", False),
            }
        )
        self.received.append(cid)


@pytest.fixture
def portfolio(monkeypatch: pytest.MonkeyPatch) -> Iterator[PortfolioStub]:
    stub = PortfolioStub()
    monkeypatch.setenv("PORTFOLIO_INTELLIGENCE_URL", stub.url)
    yield stub
    stub.close()


@pytest.fixture
def execution(monkeypatch: pytest.MonkeyPatch) -> Iterator[ExecutionStub]:
    stub = ExecutionStub()
    monkeypatch.setenv("EXECUTION_URL", stub.url)
    yield stub
    stub.release.set()
    stub.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(
    request: pytest.FixtureRequest, harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The harness's SQLite file, or a fresh PostgreSQL database on `TEST_DATABASE_URL`'s server."""
    if request.param == "sqlite":
        yield harness.database_url
        return
    async with scratch_database("qt_risktest") as url:
        monkeypatch.setenv("DATABASE_URL", url)
        yield url


@pytest.fixture(autouse=True)
def _no_venue_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Round numbers read easier; the tests of the costs set them back.
    monkeypatch.setenv("VENUE_MAX_SLIPPAGE_BPS", "0")
    monkeypatch.setenv("VENUE_TAKER_FEE_BPS", "0")


def tick(
    harness: ServiceHarness,
    client: TestClient,
    symbol: str = "BTCUSDT",
    *,
    bid: str = "100",
    ask: str = "100",
    ts_ms: int | None = None,
) -> None:
    """Publish a quote and wait until risk-safety holds it."""
    harness.publish(
        MarketTick(
            symbol=symbol,
            bid=Decimal(bid),
            ask=Decimal(ask),
            last=Decimal(bid),
            volume=Decimal(10),
            ts_ms=now_ms() if ts_ms is None else ts_ms,
        )
    )

    def held() -> bool:
        quotes = client.get("/state").json()["quotes"]
        return any(
            q["symbol"] == symbol
            and Decimal(q["bid"]) == Decimal(bid)
            and Decimal(q["ask"]) == Decimal(ask)
            for q in quotes
        )

    wait_for(held, 10, f"risk-safety to hold the {symbol} quote {bid}/{ask}")


def check(
    client: TestClient,
    cid: str,
    *,
    side: str = "BUY",
    quantity: str = "1",
    price: str | None = "100",
    reduce_only: bool = False,
    limit_price: str | None = None,
    symbol: str = "BTCUSDT",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_order_id": cid,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "order_type": "LIMIT" if limit_price else "MARKET",
        "limit_price": limit_price,
        "reduce_only": reduce_only,
    }
    if price is not None:
        body["price"] = price
    response = client.post("/check", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


# --- approvals and the reference price ---------------------------------------------------------


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
        published = harness.published("risk.decision")
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
        wait_for(execution.exposure_held.is_set, 10, "check A to read the exposure")
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
    with harness.run(create_service) as client:
        tick(harness, client)
        first = check(client, "e-1", quantity="0.9")
        assert first["approved"] is True
        expires = first["approval"]["expires_ms"]
        wait_for(lambda: now_ms() > expires, 5, "the approval to expire")
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
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
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
    with harness.run(create_service) as client:
        tick(harness, client)
        execution.fill_sequence = 10
        portfolio.fills(booked_sequence=8, max_sequence=8)
        # Behind, but not for long yet.
        assert check(client, "l-0", quantity="0.001")["approved"] is True
        n = iter(range(1, 10_000))
        stale = wait_for(
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
        wait_for(lambda: execution.pushes, 10, "the push to reach execution")
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
