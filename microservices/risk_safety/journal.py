"""The local journal of a trading-state change in force whose record the database refused.

A kill switch given while the database is down takes effect without its record: risk-safety
holds it in memory and execution enforces it (guard.py), and the record is written when the
database answers. If both processes restart before that, neither remembers it, and the
database would give back the state before the halt. The journal is the copy that survives:
one small JSON file, replaced atomically and fsynced before the kill switch answers, read at
start-up after the database's own state, removed once the record is written.

It speaks for one database (the URL, password hidden, is in the file) and one epoch: a journal
of another database, or of an epoch the database already holds, is never taken.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from backend.infra.vardir import var_directory
from backend.trading.risk import TradingState

__all__ = [
    "Journal",
    "JournalUnreadable",
    "StateChange",
    "StateJournal",
    "closes_trading",
    "default_journal_path",
]

FORMAT = 1


def default_journal_path() -> Path:
    """`<var directory>/risk-safety.state-journal.json`, beside the embedded SQLite file."""
    return var_directory() / "risk-safety.state-journal.json"


def closes_trading(previous: TradingState, target: TradingState) -> bool:
    """A move that only takes trading away (to HALTED; ACTIVE to REDUCING): safe to enforce
    before its record is written. Any other move needs its record first."""
    if target is previous:
        return False
    return target is TradingState.HALTED or (
        target is TradingState.REDUCING and previous is TradingState.ACTIVE
    )


@dataclass(frozen=True, slots=True)
class StateChange:
    """A trading-state change as its record has it: the epoch it made, when it took effect,
    who asked, in which trace."""

    epoch: int
    previous: TradingState
    target: TradingState
    reason: str
    actor: str
    at: datetime
    traceparent: str | None

    def document(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "previous": self.previous.value,
            "target": self.target.value,
            "reason": self.reason,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "traceparent": self.traceparent,
        }

    @classmethod
    def of(cls, document: dict[str, Any]) -> StateChange:
        at = datetime.fromisoformat(document["at"])
        if at.tzinfo is None:
            raise ValueError(f"time {document['at']!r} has no UTC offset")
        traceparent = document["traceparent"]
        if traceparent is not None and not isinstance(traceparent, str):
            raise TypeError(f"traceparent {traceparent!r} is not a string")
        return cls(
            epoch=int(document["epoch"]),
            previous=TradingState(document["previous"]),
            target=TradingState(document["target"]),
            reason=str(document["reason"]),
            actor=str(document["actor"]),
            at=at,
            traceparent=traceparent,
        )


@dataclass(frozen=True, slots=True)
class Journal:
    """The changes in force whose records `database` (its URL, password hidden) still owes,
    in epoch order."""

    database: str
    changes: tuple[StateChange, ...]


class JournalUnreadable(ValueError):
    """The journal file exists but does not hold a journal; the message names the file."""


class StateJournal:
    """The journal file: `write` replaces it whole or not at all, `read` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, journal: Journal) -> None:
        """Replace the file with `journal`, durably: a temporary file beside it, fsynced,
        renamed over it, and the directory fsynced (the rename itself must survive a crash)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": FORMAT,
            "database": journal.database,
            "changes": [change.document() for change in journal.changes],
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(document, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        _fsync_directory(self.path.parent)

    def read(self) -> Journal | None:
        """The journal, or None without a file; `JournalUnreadable` naming the file and what
        is wrong with it otherwise."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # no file can be there
            return None
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
            changes = tuple(StateChange.of(change) for change in document["changes"])
            return Journal(str(document["database"]), changes)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalUnreadable(f"{self.path}: {type(exc).__name__}: {exc}") from exc

    def remove(self) -> None:
        """Delete the file (every record is written); nothing if there is none."""
        self.path.unlink(missing_ok=True)
        _fsync_directory(self.path.parent)

    def set_aside(self) -> Path:
        """Keep an unreadable file for a human to look at, out of the way of the next one."""
        aside = self.path.with_name(f"{self.path.name}.unreadable")
        os.replace(self.path, aside)
        return aside


def _fsync_directory(directory: Path) -> None:
    if not directory.exists():
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
