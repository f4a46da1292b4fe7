"""aiosqlite connections whose statements cost one hop to the connection's thread each.

SQLAlchemy's aiosqlite adapter opens a cursor, executes, fetches and closes it: four round
trips to the thread that owns the sqlite3 connection, each a wake-up of that thread and of the
event loop. On a busy machine those hand-offs, not SQLite, are most of a short transaction's
cost. The cursor here does all four in one call on that thread and keeps what it read (a
result is read whole, as the adapter's buffered cursor reads it anyway).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from pathlib import Path
from typing import Any

import aiosqlite

_Outcome = tuple[Any, int, int | None, list[Any]]


def _run(
    conn: sqlite3.Connection, sql: str, parameters: Any, many: bool
) -> _Outcome:  # pragma: no cover - runs on the connection's thread
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        # Read after the rows: an UPDATE … RETURNING counts its rows as they are stepped.
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor:
    """The async cursor SQLAlchemy's adapter drives, run in one hop per statement."""

    __slots__ = ("_conn", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, conn: OneHopConnection) -> None:
        self._conn = conn
        self._rows: deque[Any] = deque()
        self.arraysize = 1
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._rows.clear()

    async def _run(self, sql: str, parameters: Any, many: bool) -> OneHopCursor:
        outcome: _Outcome = await self._conn._execute(  # type: ignore[no-untyped-call]
            _run, self._conn._conn, sql, parameters, many
        )
        self.description, self.rowcount, self.lastrowid, rows = outcome
        self._rows = deque(rows)
        return self

    async def execute(self, sql: str, parameters: Any = None) -> OneHopCursor:
        return await self._run(sql, parameters, False)

    async def executemany(self, sql: str, parameters: Any) -> OneHopCursor:
        return await self._run(sql, parameters, True)

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = min(len(self._rows), self.arraysize if size is None else size)
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def close(self) -> None:
        self._rows.clear()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None


class OneHopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors run each statement in one hop."""

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def rollback(self) -> None:
        """Roll back the open transaction; with none open (the pool's reset after a commit),
        nothing to do and no hop, as sqlite3's own rollback decides on the same flag."""
        conn = self._connection
        if conn is not None and not conn.in_transaction:
            return
        await super().rollback()


def connect(database: str | Path, **kwargs: Any) -> OneHopConnection:
    """Open `database` like `aiosqlite.connect`; for SQLAlchemy's `async_creator_fn`."""
    kwargs.pop("iter_chunk_size", None)
    location = database.decode() if isinstance(database, bytes) else str(database)

    def connector() -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(location, **kwargs)
        return conn

    conn = OneHopConnection(connector, 64)
    # As SQLAlchemy does for the connections it opens: the thread never holds the process up.
    conn._thread.daemon = True
    return conn
