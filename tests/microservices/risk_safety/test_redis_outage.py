"""risk-safety with its Redis stopped: decisions and halts take effect, answer fast, and their
events reach the bus once Redis is back, through the outbox."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backend.infra.eventbus import EmbeddedRedis
from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import (
    ExecutionStub,
    PortfolioStub,
    check,
    tick,
)
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def test_a_kill_switch_during_a_redis_outage_answers_at_once_and_its_event_follows(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")  # this test's own server: the shared one stays up
    server.start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        own = ServiceHarness(server.url, harness.prefix, harness.database_url)
        with own.run(create_service) as client:
            tick(own, client)
            server.stop()

            started = time.monotonic()
            denied = check(client, "during-outage", quantity="1000000")
            check_s = time.monotonic() - started
            started = time.monotonic()
            halted = client.post("/kill-switch", json={"operator": "alice", "reason": "outage"})
            halt_s = time.monotonic() - started
            print(f"/check {check_s * 1000:.0f} ms, /kill-switch {halt_s * 1000:.0f} ms")

            assert not denied["approved"]
            assert halted.status_code == 200, halted.text
            body = halted.json()
            assert (body["state"], body["changed"], body["event"]) == ("HALTED", True, "queued")
            assert body["execution"]["acknowledged"]
            assert halt_s < 1.0, f"the kill switch took {halt_s:.2f} s"
            assert client.get("/state").json()["state"] == "HALTED"
            wait_until(
                lambda: (
                    'outbox_pending_events{source="risk-safety"} 2.0' in client.get("/metrics").text
                ),
                # Below the publish attempt's timeout (5 s): the gauge counts what is queued
                # when the answer says so, not when the attempt gives up.
                4,
                "the outbox gauge to count the decision and the halt",
            )

            server.start()  # same port and data
            wait_until(
                lambda: own.published("risk.state_changed") and own.published("risk.decision"),
                10,
                "the relay to publish the decision and the halt",
            )
            assert [e["state"] for e in own.published("risk.state_changed")] == ["HALTED"]
            assert [e["client_order_id"] for e in own.published("risk.decision")] == [
                "during-outage"
            ]

            resumed = client.post("/resume", json={"operator": "alice", "reason": "back"}).json()
            assert (resumed["state"], resumed["event"]) == ("ACTIVE", "published")
    finally:
        server.stop()
