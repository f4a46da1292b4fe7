"""risk-safety with its PostgreSQL stopped: every write answers a JSON 503 naming the database;
a halt still takes effect, and is recorded once the database is back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client import REGISTRY

from microservices.risk_safety.guard import ACTOR_FROM_EXECUTION
from microservices.risk_safety.journal import StateJournal, default_journal_path
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


@dataclass
class Outage:
    """risk-safety on a private PostgreSQL cluster that the test stops, its neighbours stubbed."""

    harness: ServiceHarness
    portfolio: PortfolioStub
    execution: ExecutionStub
    cluster: PrivateCluster

    @contextlib.contextmanager
    def serving(self) -> Iterator[TestClient]:
        """risk-safety started and holding a quote."""
        with self.harness.run(create_service) as client:
            tick(self.harness, client)
            yield client

    @contextlib.contextmanager
    def database_down(self, client: TestClient, *, back_after: bool = True) -> Iterator[None]:
        """The cluster stopped, and risk-safety unready, for the block; started again after it
        (`back_after`), and at once if the block fails."""
        self.cluster.stop()
        try:
            wait_until(lambda: client.get("/health/ready").status_code == 503, 10, "unready")
            yield
        except BaseException:
            self.cluster.start()
            raise
        if back_after:
            self.cluster.start()


@pytest.fixture
def outage(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    cluster_database: str,
    private_cluster: PrivateCluster,
) -> Outage:
    return Outage(harness, portfolio, execution, private_cluster)


def test_every_write_answers_503_naming_the_database_then_works_again(
    outage: Outage,
) -> None:
    with outage.serving() as client:
        with outage.database_down(client):
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
            # The halt took effect without its record (see the test below).
            assert client.get("/state").json()["state"] == "HALTED"
        wait_until(lambda: client.get("/health/ready").status_code == 200, 20, "ready again")
        assert (
            client.post("/kill-switch", json={"operator": "alice", "reason": "db back"}).json()[
                "state"
            ]
            == "HALTED"
        )


def test_a_halt_during_the_outage_takes_effect_and_is_recorded_once_the_database_is_back(
    outage: Outage,
) -> None:
    with outage.serving() as client:
        before = client.get("/state").json()
        assert (before["state"], before["recorded"]) == ("ACTIVE", True)
        epoch = before["epoch"] + 1
        with outage.database_down(client):
            halted_at = datetime.now(UTC)
            started = time.monotonic()
            answer = client.post("/kill-switch", json={"operator": "alice", "reason": "db down"})
            took_s = time.monotonic() - started
            # A 503 naming the database, that says what did take effect, within a second.
            assert_database_503(answer)
            assert took_s < 1.0, took_s
            body = answer.json()
            assert (body["state"], body["epoch"], body["changed"]) == ("HALTED", epoch, True)
            assert body["recorded"] is False and body["execution"]["acknowledged"] is True
            assert (
                f"trading state HALTED (epoch {epoch}) is in force but not recorded"
                in (body["detail"])
            )
            assert (outage.execution.pushes[-1]["state"], outage.execution.pushes[-1]["epoch"]) == (
                "HALTED",
                epoch,
            )
            state = client.get("/state").json()
            assert (state["state"], state["epoch"], state["recorded"]) == ("HALTED", epoch, False)
            assert REGISTRY.get_sample_value("risk_trading_state_unrecorded") == 1
            # Opening trading needs its record: refused, and nothing reaches outage.execution.
            pushes = len(outage.execution.pushes)
            assert_database_503(client.post("/resume", json={"operator": "bob", "reason": "x"}))
            assert len(outage.execution.pushes) == pushes
            assert client.get("/state").json()["state"] == "HALTED"
            # Asked again: pushed again, still in force, still not recorded.
            again = client.post("/kill-switch", json={"operator": "alice", "reason": "again"})
            assert_database_503(again)
            assert (again.json()["changed"], again.json()["recorded"]) == (False, False)
            assert len(outage.execution.pushes) == pushes + 1
        wait_until(lambda: client.get("/state").json()["recorded"] is True, 20, "the halt recorded")
        assert REGISTRY.get_sample_value("risk_trading_state_unrecorded") == 0
        (change, *_) = client.get("/state/changes").json()["data"]
        assert (change["from_state"], change["state"]) == ("ACTIVE", "HALTED")
        assert (change["actor"], change["reason"]) == ("alice", "db down")
        # Recorded as it happened: its own time, not the time the database came back.
        recorded_at = datetime.fromisoformat(change["changed_at"].replace("Z", "+00:00"))
        assert abs((recorded_at - halted_at).total_seconds()) < 1.0
        assert client.get("/state").json()["epoch"] == epoch
    # A restart reads the halt back from the database.
    with outage.harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"], state["recorded"]) == ("HALTED", epoch, True)


def test_a_halt_not_recorded_before_a_restart_is_taken_back_from_execution(
    outage: Outage,
) -> None:
    with outage.serving() as client:
        epoch = client.get("/state").json()["epoch"] + 1
        with outage.database_down(client, back_after=False):
            answer = client.post("/kill-switch", json={"operator": "alice", "reason": "db down"})
            assert_database_503(answer)
            assert answer.json()["recorded"] is False
    # risk-safety stopped with the halt unrecorded, and starts again without its journal (a
    # new pod); execution still enforces the halt.
    assert StateJournal(default_journal_path()).read() is not None
    default_journal_path().unlink()
    outage.cluster.start()
    with outage.harness.run(create_service) as client:
        wait_until(
            lambda: (
                client.get("/state").json()["recorded"] is True
                and client.get("/state").json()["state"] == "HALTED"
            ),
            20,
            "the halt taken back from execution and recorded",
        )
        state = client.get("/state").json()
        assert (state["state"], state["epoch"]) == ("HALTED", epoch)
        (change, *_) = client.get("/state/changes").json()["data"]
        assert (change["from_state"], change["state"], change["reason"]) == (
            "ACTIVE",
            "HALTED",
            "db down",
        )
        assert change["actor"] == ACTOR_FROM_EXECUTION
        # Opening trading works again, one epoch further, recorded as usual.
        resumed = client.post("/resume", json={"operator": "bob", "reason": "db back"}).json()
        assert (resumed["state"], resumed["epoch"], resumed["recorded"]) == (
            "ACTIVE",
            epoch + 1,
            True,
        )


def test_changes_not_recorded_survive_a_restart_of_both_services_in_the_journal(
    outage: Outage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loss limit moves to REDUCING and an operator then halts, both during the outage;
    risk-safety and execution both restart before the database returns. The journal keeps
    both changes: trading stays halted, and both records are written, in order."""
    monkeypatch.setenv("RISK_MAX_DAILY_LOSS", "1000")
    monkeypatch.setenv("RISK_REFRESH_MS", "0")
    journal = StateJournal(default_journal_path())
    with outage.serving() as client:
        epoch = client.get("/state").json()["epoch"]
        with outage.database_down(client, back_after=False):
            outage.portfolio.reset(equity="98500", daily_pnl="-1500")
            order = {
                "client_order_id": "loss-1",
                "symbol": "BTCUSDT",
                "side": "BUY",
                "quantity": "1",
                "order_type": "MARKET",
                "price": "100",
            }
            assert_database_503(client.post("/check", json=order))
            state = client.get("/state").json()
            assert (state["state"], state["epoch"], state["recorded"]) == (
                "REDUCING",
                epoch + 1,
                False,
            )
            # The halt does not wait for the record of the change before it.
            answer = client.post("/kill-switch", json={"operator": "alice", "reason": "db down"})
            assert_database_503(answer)
            assert (answer.json()["state"], answer.json()["epoch"]) == ("HALTED", epoch + 2)
            assert [(p["state"], p["epoch"]) for p in outage.execution.pushes] == [
                ("REDUCING", epoch + 1),
                ("HALTED", epoch + 2),
            ]
            written = journal.read()
            assert written is not None
            assert [(c.epoch, c.target.value, c.actor) for c in written.changes] == [
                (epoch + 1, "REDUCING", "risk-safety"),
                (epoch + 2, "HALTED", "alice"),
            ]
    # Execution restarted too: it holds no state any more.
    outage.execution.enforced, outage.execution.epoch = None, 0
    outage.cluster.start()
    with outage.harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"]) == ("HALTED", epoch + 2)
        wait_until(lambda: client.get("/state").json()["recorded"] is True, 20, "recorded")
        audit = client.get("/state/changes").json()["data"]
        assert [(a["from_state"], a["state"], a["actor"]) for a in reversed(audit)] == [
            ("ACTIVE", "REDUCING", "risk-safety"),
            ("REDUCING", "HALTED", "alice"),
        ]
        assert journal.read() is None
    with outage.harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"], state["recorded"]) == ("HALTED", epoch + 2, True)


def test_a_resume_during_the_outage_reaches_nothing_and_execution_stays_halted(
    outage: Outage,
) -> None:
    """Opening trading is committed before execution hears of it: with the database down, a
    resume is refused and execution keeps the halt (and so would take the next one)."""
    with outage.serving() as client:
        halted = client.post("/kill-switch", json={"operator": "alice", "reason": "x"}).json()
        assert (halted["state"], halted["recorded"]) == ("HALTED", True)
        pushes = len(outage.execution.pushes)
        with outage.database_down(client):
            assert_database_503(client.post("/resume", json={"operator": "bob", "reason": "y"}))
            assert len(outage.execution.pushes) == pushes
            assert (outage.execution.enforced or {}).get("state") == "HALTED"
            state = client.get("/state").json()
            assert (state["state"], state["epoch"], state["recorded"]) == (
                "HALTED",
                halted["epoch"],
                True,
            )
        wait_until(lambda: client.get("/health/ready").status_code == 200, 20, "ready again")
        resumed = client.post("/resume", json={"operator": "bob", "reason": "y"}).json()
        assert (resumed["state"], resumed["epoch"]) == ("ACTIVE", halted["epoch"] + 1)
        assert (outage.execution.pushes[-1]["state"], outage.execution.pushes[-1]["epoch"]) == (
            "ACTIVE",
            halted["epoch"] + 1,
        )


def test_a_journal_the_disk_refuses_leaves_the_halt_in_force_and_recorded_later(
    outage: Outage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("RISK_STATE_JOURNAL", str(blocker / "journal.json"))
    with outage.serving() as client:
        epoch = client.get("/state").json()["epoch"] + 1
        with outage.database_down(client):
            answer = client.post("/kill-switch", json={"operator": "alice", "reason": "db down"})
            assert_database_503(answer)
            assert (answer.json()["state"], answer.json()["epoch"]) == ("HALTED", epoch)
            state = client.get("/state").json()
            assert (state["state"], state["recorded"]) == ("HALTED", False)
        wait_until(lambda: client.get("/state").json()["recorded"] is True, 20, "recorded")
        (change, *_) = client.get("/state/changes").json()["data"]
        assert (change["state"], change["actor"]) == ("HALTED", "alice")
