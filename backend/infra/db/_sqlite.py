"""aiosqlite connections whose statements run on the event loop's thread, where that is safe.

SQLAlchemy's aiosqlite adapter sends every call to the thread that owns the sqlite3
connection: a queue put, a wake-up of that thread, the GIL handed over and back, and a wake-up
of the event loop, several times the 20-80 us SQLite takes for the short statements of an
order. So a statement, `executemany`, `commit` and `rollback` run directly on the loop's thread
(the adapter awaits each call, so the connection has one caller at a time), with two guards:

* The loop never waits for a lock. SQLite's own busy handler is off (busy timeout 0); a
  statement that finds the database locked is retried after an `asyncio.sleep`, with back-off,
  until the connection's busy timeout has passed, and then fails with SQLite's own "database is
  locked". Only where SQLite allows it: outside a transaction, a COMMIT, or a WAL database that
  could not get its write lock; a stale snapshot (`SQLITE_BUSY_SNAPSHOT`) means the transaction
  must start again, and raises at once, as SQLite's busy handler would have let it.
* The loop never runs a long read or a checkpoint. A read-only statement runs under a progress
  handler that interrupts it after `READ_BUDGET_S` and runs it again on the connection's
  thread. A write is never interrupted: inside a transaction that would roll the whole
  transaction back. WAL checkpoints, which SQLite would run inside a COMMIT, run on the
  connection's thread every `CHECKPOINT_EVERY_COMMITS` commits instead.

A call made while the thread still has work for this connection (a call whose caller was
cancelled, the readiness check's own statements) goes to the thread too, behind that work, so
the connection is never used from two threads at once. A result is read whole, as the
adapter's buffered cursor reads it anyway.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from queue import SimpleQueue
from threading import Thread
from time import perf_counter
from typing import Any, TypeVar

import aiosqlite
from aiosqlite.core import _connection_worker_thread

T = TypeVar("T")
_Outcome = tuple[Any, int, int | None, list[Any]]

READ_BUDGET_S = 0.002
"""How long a read may run on the loop's thread before it is moved to the connection's."""
PROGRESS_STEPS = 1000
"""SQLite VM steps between two looks at the clock during a read (some 5-30 us of work)."""
BUSY_BACKOFF_S = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025)
"""Waits between two attempts on a locked database, the last repeated (SQLite's own steps)."""
CHECKPOINT_EVERY_COMMITS = 100
"""Commits between two WAL checkpoints, run on the connection's thread: SQLite's automatic one
would run inside a COMMIT, on the loop, with its two fsyncs."""
_RETRYABLE_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY})

_LEADING_COMMENTS = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*", re.DOTALL)
_WRITES = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE|UPSERT)\b", re.IGNORECASE)


def reads_only(sql: str) -> bool:
    """Whether `sql` can only read, so interrupting it loses nothing. Unsure means no."""
    head = sql[_LEADING_COMMENTS.match(sql).end() :][:6].upper()  # type: ignore[union-attr]
    if head.startswith(("SELECT", "VALUES")):
        return True
    # A common table expression may lead an INSERT, UPDATE or DELETE.
    return head.startswith("WITH") and not _WRITES.search(sql)


def _run(conn: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Outcome:
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


def _checkpoint(conn: sqlite3.Connection) -> None:  # pragma: no cover - on the thread
    # PASSIVE: copies what no reader still needs, never waits for a lock.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()


class _ThreadJobs:
    """aiosqlite's queue of calls for the connection's thread, knowing when all are done.

    Every call reaches the thread through `put_nowait` (aiosqlite's own and the one SQLAlchemy
    queues to set the isolation level), so none escapes the count.
    """

    __slots__ = ("_queue", "finished", "queued")

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[Any, Callable[[], Any]]] = SimpleQueue()
        self.queued = 0  # written on the loop's thread only
        self.finished = 0  # written on the connection's thread only

    @property
    def idle(self) -> bool:
        return self.finished == self.queued

    def put_nowait(self, item: tuple[Any, Callable[[], Any]]) -> None:
        future, function = item
        self.queued += 1
        self._queue.put_nowait((future, partial(self._finish, function)))

    def get(self) -> tuple[Any, Callable[[], Any]]:
        return self._queue.get()

    def _finish(self, function: Callable[[], Any]) -> Any:  # pragma: no cover - on the thread
        try:
            return function()
        finally:
            self.finished += 1


class _Overran(Exception):
    """A read ran past its budget on the loop's thread and was interrupted."""


class OneHopCursor:
    """The async cursor SQLAlchemy's adapter drives; a statement is one call of the connection."""

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
        outcome = await self._conn.run(sql, parameters, many, reads=not many and reads_only(sql))
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
    """An aiosqlite connection that runs statements on the loop's thread when it is safe."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], busy_timeout_s: float) -> None:
        super().__init__(connector, 64)
        self.busy_timeout_s = busy_timeout_s
        """How long a statement keeps trying a locked database before it fails."""
        self._jobs = _ThreadJobs()
        self._tx = self._jobs  # type: ignore[assignment]
        self._thread = Thread(target=_connection_worker_thread, args=(self._jobs,), daemon=True)
        self._wal = False
        self._commits = 0
        self._read_deadline = 0.0
        self._overran = False

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def run(self, sql: str, parameters: Any, many: bool, *, reads: bool) -> _Outcome:
        """Run one statement (`executemany` with `many`): its description, row count, last
        row id and rows. `reads`: it only reads (see `reads_only`)."""
        return await self._call(
            partial(_run, sql=sql, parameters=parameters, many=many), reads=reads
        )

    async def commit(self) -> None:
        wrote = self._conn.in_transaction
        await self._call(sqlite3.Connection.commit, reads=False, commit=True)
        if wrote:
            self._commits += 1
            if self._commits >= CHECKPOINT_EVERY_COMMITS and self._running:
                # Nobody waits for it; the next caller's statements queue behind it meanwhile.
                self._commits = 0
                self._jobs.put_nowait((None, partial(_checkpoint, self._conn)))

    async def rollback(self) -> None:
        """Roll back the open transaction; with none open (the pool's reset after a commit),
        nothing to do, as sqlite3's own rollback decides on the same flag."""
        conn = self._connection
        if conn is not None and not conn.in_transaction:
            return
        await self._call(sqlite3.Connection.rollback, reads=False, retry=False)

    async def _call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        reads: bool,
        commit: bool = False,
        retry: bool = True,
    ) -> T:
        deadline: float | None = None
        attempt = 0
        while True:
            conn = self._conn
            in_transaction = conn.in_transaction
            try:
                if self._running and self._jobs.idle:
                    try:
                        return self._inline(fn, conn, reads)
                    except _Overran:
                        pass
                result: T = await self._execute(fn, conn)  # type: ignore[no-untyped-call]
                return result
            except sqlite3.OperationalError as exc:
                if not retry or not self._may_retry(exc, conn, in_transaction, commit):
                    raise
                now = asyncio.get_running_loop().time()
                if deadline is None:
                    deadline = now + self.busy_timeout_s
                if now >= deadline:
                    raise
                await asyncio.sleep(min(BUSY_BACKOFF_S[attempt], deadline - now))
                attempt = min(attempt + 1, len(BUSY_BACKOFF_S) - 1)

    def _inline(
        self, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection, reads: bool
    ) -> T:
        if not reads:
            return fn(conn)
        self._read_deadline = perf_counter() + READ_BUDGET_S
        self._overran = False
        conn.set_progress_handler(self._past_budget, PROGRESS_STEPS)
        try:
            return fn(conn)
        except sqlite3.OperationalError:
            if self._overran:
                raise _Overran from None
            raise
        finally:
            conn.set_progress_handler(None, 0)

    def _past_budget(self) -> bool:
        if perf_counter() < self._read_deadline:
            return False
        self._overran = True
        return True

    def _may_retry(
        self,
        exc: sqlite3.OperationalError,
        conn: sqlite3.Connection,
        in_transaction: bool,
        commit: bool,
    ) -> bool:
        """Whether SQLite lets the statement that failed with `exc` simply run again.

        Outside a transaction, or for a COMMIT, always. Inside one, only in WAL mode, where a
        plain SQLITE_BUSY on a write means the write lock was not free and nothing was done; in
        a rollback journal a BUSY inside a transaction may be a deadlock SQLite reports at once.
        """
        if getattr(exc, "sqlite_errorcode", None) not in _RETRYABLE_BUSY:
            return False
        if commit or not in_transaction:
            return True
        if not self._wal:
            # WAL mode is a property of the file, so once seen it stays.
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            self._wal = mode is not None and str(mode[0]).lower() == "wal"
        return self._wal


def connect(database: str | Path, **kwargs: Any) -> OneHopConnection:
    """Open `database` like `aiosqlite.connect`; for SQLAlchemy's `async_creator_fn`.

    `timeout` (seconds, as for `sqlite3.connect`) is how long a statement waits for a lock; the
    connection waits on the event loop, so SQLite's own busy timeout is 0.
    """
    kwargs.pop("iter_chunk_size", None)
    busy_timeout_s = float(kwargs.pop("timeout", 5.0))
    kwargs.update(timeout=0.0, check_same_thread=False)
    location = database.decode() if isinstance(database, bytes) else str(database)

    def connector() -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(location, **kwargs)
        conn.execute("PRAGMA wal_autocheckpoint=0").close()  # see CHECKPOINT_EVERY_COMMITS
        return conn

    # As SQLAlchemy does for the connections it opens, its thread is a daemon: it never holds
    # the process up.
    return OneHopConnection(connector, busy_timeout_s)
