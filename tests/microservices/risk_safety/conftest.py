"""risk-safety's neighbours as real HTTP stubs, quotes on the real bus, and small helpers.

The portfolio stub answers `GET /portfolio` (contract C4), the execution stub answers
`GET /exposure` (C3) and records every `POST /risk/state` push (C2).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from backend.trading.approval import DEVELOPMENT_SECRET, SignedState, verify_state
from tests.support.factories import market_tick, now_ms
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.wire import portfolio_answer


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
    """GET /portfolio with `body`; as_of_ms = now - age_ms; `fills` complete unless changed.

    `reads` counts the GETs answered. While `release` is clear, a GET waits for it before
    reading `body` (an answer that is slow to come); `status` other than 200 answers an error.
    """

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.age_ms = 0
        self.reads = 0
        self.status = 200
        self.release = threading.Event()
        self.release.set()
        self.reset()
        super().__init__()

    def reset(self, **changes: Any) -> None:
        answer = portfolio_answer(Decimal(100_000), {}).model_dump(mode="json")
        self.body = {**answer, **changes}

    def fills(self, **changes: Any) -> None:
        self.body["fills"] = {**self.body["fills"], **changes}

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path != "/portfolio":
            return 404, {"detail": "Not Found"}
        self.release.wait(10)
        self.reads += 1
        if self.status != 200:
            return self.status, {"detail": "portfolio is failing"}
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
        self.enforced: dict[str, Any] | None = None
        """The verified push with the highest epoch: what GET /risk/state reports."""
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
            if body["epoch"] > self.epoch or self.enforced is None:
                self.enforced = {**body, "adopted_at_ms": int(time.time() * 1000)}
            self.epoch = max(self.epoch, body["epoch"])
            return 200, {"state": body["state"], "epoch": body["epoch"], "canceled": self.canceled}
        if method == "GET" and url.path == "/risk/state":
            held = self.enforced or {}
            return 200, {
                "state": held.get("state"),
                "epoch": held.get("epoch"),
                "source": "push" if held else None,
                "reason": held.get("reason"),
                "adopted_at_ms": held.get("adopted_at_ms"),
                "adopted_fill_sequence": 0 if held else None,
                "lease_ms": 30_000,
                "lease_age_ms": 0 if held else None,
                "lease_expired": not held,
                "accepts": "ALL" if held.get("state") == "ACTIVE" else "REDUCE_ONLY",
                "blocker": None,
            }
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
    stub.release.set()
    stub.close()


@pytest.fixture
def execution(monkeypatch: pytest.MonkeyPatch) -> Iterator[ExecutionStub]:
    stub = ExecutionStub()
    monkeypatch.setenv("EXECUTION_URL", stub.url)
    yield stub
    stub.release.set()
    stub.close()


@pytest.fixture
def database(harness_database: ServiceHarness) -> str:
    """The harness's database: a SQLite file, then a fresh PostgreSQL database."""
    return harness_database.database_url


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
    harness.publish(market_tick(bid, ask, symbol, volume="10", ts_ms=ts_ms))

    def held() -> bool:
        quotes = client.get("/state").json()["quotes"]
        return any(
            q["symbol"] == symbol
            and Decimal(q["bid"]) == Decimal(bid)
            and Decimal(q["ask"]) == Decimal(ask)
            for q in quotes
        )

    wait_until(held, 10, f"risk-safety to hold the {symbol} quote {bid}/{ask}")


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
