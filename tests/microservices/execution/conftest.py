"""Fixtures for execution tests: a real HTTP risk-safety stub serving a signed trading state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from backend.trading.approval import DEVELOPMENT_SECRET, SignedState, sign_state
from microservices.execution.service import create_service
from tests.microservices.conftest import ServiceHarness, wait_for


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RiskStub:
    """risk-safety's GET /state as a real HTTP server: a signed state, ACTIVE in epoch 0 first.

    `change(state)` moves to the next epoch as risk-safety does on every state change and
    records when; `failing` answers 503; `signed = False` leaves out `epoch` and `state_token`
    (a risk-safety that does not sign its state).
    """

    def __init__(self, secret: str = DEVELOPMENT_SECRET) -> None:
        self.secret = secret
        self.state = "ACTIVE"
        self.epoch = 0
        self.changed_at_ms = now_ms()
        self.failing = False
        self.signed = True
        self.polls = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.polls += 1
                if self.path != "/state" or stub.failing:
                    self.send_response(404 if self.path != "/state" else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps(stub.body()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed_state(self) -> SignedState:
        return sign_state(self.secret, state=self.state, epoch=self.epoch)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "reason": "", "changed": True}
        if self.signed:
            body.update(epoch=self.epoch, state_token=self.signed_state().token)
        return body

    def change(self, state: str) -> SignedState:
        """The next epoch in `state`, served from now on; returns its signed state."""
        self.state, self.epoch, self.changed_at_ms = state, self.epoch + 1, now_ms()
        return self.signed_state()

    def push_body(self, signed: SignedState | None = None, reason: str = "test") -> dict[str, Any]:
        signed = signed or self.signed_state()
        return {
            "state": signed.state,
            "epoch": signed.epoch,
            "token": signed.token,
            "reason": reason,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def risk(monkeypatch: pytest.MonkeyPatch) -> Iterator[RiskStub]:
    """Every execution test reads its trading state from a real HTTP risk-safety stub."""
    stub = RiskStub()
    monkeypatch.setenv("RISK_SAFETY_URL", stub.url)
    monkeypatch.setenv("EXECUTION_RISK_POLL_MS", "100")
    yield stub
    stub.close()


def risk_state(client: TestClient) -> dict[str, Any]:
    response = client.get("/risk/state")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@contextmanager
def running(harness: ServiceHarness, *, open_: bool = True) -> Iterator[TestClient]:
    """execution via the harness; with `open_`, once it enforces a verified ACTIVE state."""
    with harness.run(create_service) as client:
        if open_:
            wait_for(
                lambda: risk_state(client)["accepts"] == "ALL",
                what="execution to adopt the stub's ACTIVE state",
            )
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 if absent): counters are process-wide, so tests
    compare values before and after."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
