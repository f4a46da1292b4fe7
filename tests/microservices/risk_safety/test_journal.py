"""The state journal: a closing change in force but not recorded, kept on disk until the
database takes it, and read back at start-up only where it follows the database's record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from backend.infra.db import load_database_settings
from backend.trading.risk import TradingState
from microservices.risk_safety.journal import (
    Journal,
    JournalUnreadable,
    StateChange,
    StateJournal,
    closes_trading,
)
from microservices.risk_safety.service import NAME, create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def halt(epoch: int, *, previous: TradingState = ACTIVE, at: datetime | None = None) -> StateChange:
    return StateChange(
        epoch,
        previous,
        HALTED,
        "db down",
        "alice",
        at or datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
        TRACEPARENT,
    )


def this_database() -> str:
    """The database risk-safety records in under the test's environment, as a journal names it."""
    return load_database_settings(NAME).sqlalchemy_url.render_as_string(hide_password=True)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "risk-safety.state-journal.json"


# The file -------------------------------------------------------------------------------------


def test_a_journal_is_read_back_as_written_and_replaced_whole(tmp_path: Path) -> None:
    journal = StateJournal(tmp_path / "deep" / "journal.json")
    assert journal.read() is None
    first = Journal("sqlite+aiosqlite:///x.db", (halt(3),))
    journal.write(first)
    assert journal.read() == first
    second = Journal(
        "postgresql+asyncpg://app:***@db/qt",
        (
            StateChange(4, ACTIVE, REDUCING, "loss", "risk-safety", datetime.now(UTC), None),
            halt(5, previous=REDUCING),
        ),
    )
    journal.write(second)
    assert journal.read() == second
    # No temporary file is left beside it.
    assert [p.name for p in journal.path.parent.iterdir()] == ["journal.json"]
    journal.remove()
    journal.remove()
    assert journal.read() is None


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("{not json", "JSONDecodeError"),
        ('{"format": 2, "database": "x", "changes": []}', "format 2, expected 1"),
        ('{"format": 1, "changes": []}', "KeyError: 'database'"),
        (
            '{"format": 1, "database": "x", "changes": [{"epoch": 1, "previous": "ACTIVE",'
            ' "target": "PAUSED", "reason": "", "actor": "a", "at": "2026-12-05T09:30:00+00:00",'
            ' "traceparent": null}]}',
            "'PAUSED' is not a valid TradingState",
        ),
        (
            '{"format": 1, "database": "x", "changes": [{"epoch": 1, "previous": "ACTIVE",'
            ' "target": "HALTED", "reason": "", "actor": "a", "at": "2026-12-05T09:30:00",'
            ' "traceparent": null}]}',
            "has no UTC offset",
        ),
    ],
)
def test_an_unreadable_journal_names_the_file_and_what_is_wrong(
    tmp_path: Path, content: str, names: str
) -> None:
    path = tmp_path / "journal.json"
    path.write_text(content)
    with pytest.raises(JournalUnreadable) as caught:
        StateJournal(path).read()
    assert str(path) in str(caught.value) and names in str(caught.value)


def test_only_a_move_that_takes_trading_away_closes_it() -> None:
    assert closes_trading(ACTIVE, HALTED) and closes_trading(REDUCING, HALTED)
    assert closes_trading(ACTIVE, REDUCING)
    assert not closes_trading(HALTED, REDUCING)  # lets reduce-only orders through again
    assert not closes_trading(HALTED, ACTIVE) and not closes_trading(REDUCING, ACTIVE)
    assert not closes_trading(HALTED, HALTED)


# risk-safety starting with a journal --------------------------------------------------------


def test_a_journaled_halt_one_epoch_past_the_record_is_in_force_and_recorded_at_start(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    journal_path: Path,
) -> None:
    halted_at = datetime.now(UTC) - timedelta(minutes=3)
    StateJournal(journal_path).write(Journal(this_database(), (halt(1, at=halted_at),)))
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"]) == ("HALTED", 1)
        wait_until(lambda: client.get("/state").json()["recorded"] is True, 10, "recorded")
        assert not journal_path.exists()
        assert REGISTRY.get_sample_value("risk_trading_state_unrecorded") == 0
        (change,) = client.get("/state/changes").json()["data"]
        assert (change["from_state"], change["state"], change["actor"], change["reason"]) == (
            "ACTIVE",
            "HALTED",
            "alice",
            "db down",
        )
        # The record has the halt's own time and trace, not the restart's.
        changed_at = datetime.fromisoformat(change["changed_at"].replace("Z", "+00:00"))
        assert abs((changed_at - halted_at).total_seconds()) < 0.01
        assert change["trace_id"] == TRACEPARENT.split("-")[1]
        # Execution is given the state again (it polls; a push of the same state also works).
        assert (
            client.post("/kill-switch", json={"operator": "a", "reason": "x"}).json()["epoch"] == 1
        )
        assert (execution.pushes[-1]["state"], execution.pushes[-1]["epoch"]) == ("HALTED", 1)
    # Recorded: the next start reads it from the database alone.
    with harness.run(create_service) as client:
        assert client.get("/state").json()["epoch"] == 1
        assert len(client.get("/state/changes").json()["data"]) == 1


def test_a_journal_of_an_epoch_already_recorded_is_removed_and_changes_nothing(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    journal_path: Path,
) -> None:
    with harness.run(create_service) as client:
        client.post("/kill-switch", json={"operator": "alice", "reason": "db down"})
        assert not journal_path.exists()
    # The record was written but the process died before it removed the journal.
    StateJournal(journal_path).write(Journal(this_database(), (halt(1),)))
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"], state["recorded"]) == ("HALTED", 1, True)
        assert len(client.get("/state/changes").json()["data"]) == 1
        assert not journal_path.exists()


@pytest.mark.parametrize(
    "journal",
    [
        pytest.param(lambda db: Journal("sqlite+aiosqlite:///elsewhere.db", (halt(1),)), id="db"),
        pytest.param(lambda db: Journal(db, (halt(2),)), id="epoch-gap"),
        pytest.param(
            lambda db: Journal(db, (StateChange(1, HALTED, ACTIVE, "r", "bob", halt(1).at, None),)),
            id="opening",
        ),
    ],
)
def test_a_journal_that_does_not_follow_the_record_is_not_taken_and_left_in_place(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    journal_path: Path,
    journal: object,
) -> None:
    written = journal(this_database())  # type: ignore[operator]
    StateJournal(journal_path).write(written)
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["epoch"], state["recorded"]) == ("ACTIVE", 0, True)
        assert client.get("/state/changes").json()["data"] == []
    assert StateJournal(journal_path).read() == written


def test_an_unreadable_journal_is_set_aside_and_the_service_starts(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    journal_path: Path,
) -> None:
    journal_path.parent.mkdir(parents=True)
    journal_path.write_text('{"format": 1, "database": ')
    with harness.run(create_service) as client:
        assert client.get("/state").json()["state"] == "ACTIVE"
    assert not journal_path.exists()
    aside = journal_path.with_name(journal_path.name + ".unreadable")
    assert aside.read_text() == '{"format": 1, "database": '


def test_the_journal_is_json_a_human_can_read(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    StateJournal(path).write(Journal("sqlite+aiosqlite:///x.db", (halt(7),)))
    document = json.loads(path.read_text())
    assert document == {
        "format": 1,
        "database": "sqlite+aiosqlite:///x.db",
        "changes": [
            {
                "epoch": 7,
                "previous": "ACTIVE",
                "target": "HALTED",
                "reason": "db down",
                "actor": "alice",
                "at": "2026-12-05T09:30:00+00:00",
                "traceparent": TRACEPARENT,
            }
        ],
    }


def test_a_journal_that_cannot_be_read_does_not_keep_the_service_down(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    journal_path: Path,
) -> None:
    journal_path.mkdir(parents=True)  # reading it fails with an OSError
    with harness.run(create_service) as client:
        state = client.get("/state").json()
        assert (state["state"], state["recorded"]) == ("ACTIVE", True)
    assert journal_path.is_dir()
