"""Fixtures for execution tests: a real HTTP risk-safety stub serving a signed trading state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from microservices.execution.service import create_service
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.riskstub import RiskStub, now_ms

__all__ = [
    "RiskStub",
    "metric",
    "now_ms",
    "push",
    "risk",
    "risk_state",
    "running",
]


@pytest.fixture(autouse=True)
def risk(monkeypatch: pytest.MonkeyPatch) -> Iterator[RiskStub]:
    """Every execution test reads its trading state from a real HTTP risk-safety stub."""
    stub = RiskStub()
    monkeypatch.setenv("RISK_SAFETY_URL", stub.url)
    monkeypatch.setenv("EXECUTION_RISK_POLL_MS", "100")
    # Long enough that a loaded machine never lapses it by accident; lease tests set their own.
    monkeypatch.setenv("EXECUTION_RISK_LEASE_MS", "10000")
    yield stub
    stub.close()


def push(client: TestClient, risk: RiskStub, state: str) -> Any:
    """Change the state as risk-safety does: push the next epoch to execution, then commit it
    (serve it on GET /state); the push's response."""
    signed = risk.next(state)
    response = client.post("/risk/state", json=risk.push_body(signed))
    risk.serve(signed)
    return response


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
            wait_until(
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
