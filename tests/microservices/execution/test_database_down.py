"""execution with its PostgreSQL stopped: every write answers a JSON 503 naming the database."""

from __future__ import annotations

from tests.microservices.execution.conftest import RiskStub, running
from tests.microservices.execution.test_execution import order, send_tick
from tests.microservices.risk_safety.test_database_down import assert_database_503
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until
from tests.support.postgres import PrivateCluster


def test_every_write_answers_503_naming_the_database_then_works_again(
    harness: ServiceHarness, risk: RiskStub, cluster_database: str, private_cluster: PrivateCluster
) -> None:
    own = ServiceHarness(harness.redis_url, harness.prefix, cluster_database)
    with running(own) as client:
        send_tick(own, client)
        resting = client.post("/orders", json=order("rest-1", order_type="LIMIT", limit_price="90"))
        assert resting.status_code == 201, resting.text
        private_cluster.stop()
        try:
            wait_until(lambda: client.get("/health/ready").status_code == 503, 10, "unready")
            assert_database_503(client.post("/orders", json=order("down-1")))
            assert_database_503(client.post("/orders/rest-1/cancel"))
            assert_database_503(client.post("/orders/cancel-all"))
            assert_database_503(client.get("/orders"))
            # A halt pushed by risk-safety is not a write that may fail: it is adopted in
            # memory whatever the database does (HALTED means halted).
        finally:
            private_cluster.start()
        wait_until(lambda: client.get("/health/ready").status_code == 200, 20, "ready again")
        retried = client.post("/orders", json=order("down-1"))
        assert retried.status_code == 201, retried.text
