"""risk-safety with its PostgreSQL stopped: every write answers a JSON 503 naming the database."""

from __future__ import annotations

import time

from httpx import Response

from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.postgres import PrivateCluster


def assert_database_503(response: Response) -> None:
    """A JSON 503 naming the database (password masked) and when to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["dependency"] == "database"
    assert body["reason"] == "database_unavailable"
    assert "postgresql://postgres@127.0.0.1" in body["detail"]


def test_every_write_answers_503_naming_the_database_then_works_again(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    cluster_database: str,
    private_cluster: PrivateCluster,
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        private_cluster.stop()
        try:
            wait_until(lambda: client.get("/health/ready").status_code == 503, 10, "unready")
            writes = {
                "/check": lambda c: c.post(
                    "/check",
                    json={
                        "client_order_id": "down-1",
                        "symbol": "BTCUSDT",
                        "side": "BUY",
                        "quantity": "1",
                        "order_type": "MARKET",
                    },
                ),
                "/kill-switch": lambda c: c.post(
                    "/kill-switch", json={"operator": "alice", "reason": "db down"}
                ),
                "/decisions": lambda c: c.get("/decisions"),
            }
            for name, call in writes.items():
                started = time.monotonic()
                assert_database_503(call(client))
                print(f"{name}: 503 in {(time.monotonic() - started) * 1000:.0f} ms")
            # The halt was not recorded: the state risk answers with is the one in force.
            assert client.get("/state").json()["state"] == "ACTIVE"
        finally:
            private_cluster.start()
        wait_until(lambda: client.get("/health/ready").status_code == 200, 20, "ready again")
        assert (
            client.post("/kill-switch", json={"operator": "alice", "reason": "db back"}).json()[
                "state"
            ]
            == "HALTED"
        )
