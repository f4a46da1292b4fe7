"""The readiness check that `/health/ready` runs against the database."""

from __future__ import annotations

import sqlite3

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend.infra.observability import ReadinessCheck

from ._engine import describe
from ._errors import DatabaseUnavailableError, translate_errors


def database_readiness_check(
    engine: AsyncEngine, name: str = "database", timeout_s: float = 2.0
) -> ReadinessCheck:
    """A check that borrows a connection and runs `SELECT 1` (SQLite: takes the write lock).

    When the database is down the check raises `DatabaseUnavailableError` naming it, and the
    health endpoint answers 503 with that message under `name`; once the database is back the
    pool's pre-ping replaces the dead connections and the check passes again.

    A SQLite file can answer reads while another process holds its write lock (WAL), so every
    write would wait out the busy timeout and fail while `SELECT 1` passes. There the check
    takes the write lock (`BEGIN IMMEDIATE`, then `ROLLBACK`: nothing is written) waiting at
    most `SQLITE_LOCK_WAIT_MS`, and a lock held longer than that makes the service unready.
    """
    target = describe(engine.url)
    sqlite = engine.url.get_backend_name() == "sqlite"

    async def check() -> None:
        with translate_errors(target):
            async with engine.connect() as conn:
                if not sqlite:
                    await conn.execute(text("SELECT 1"))
                    return
                await conn.exec_driver_sql("SELECT 1")
                await _take_sqlite_write_lock(conn, target)

    return ReadinessCheck(name=name, check=check, timeout_s=timeout_s)


SQLITE_LOCK_WAIT_MS = 500
"""How long the readiness check waits for SQLite's write lock before calling it unavailable."""


async def _take_sqlite_write_lock(conn: AsyncConnection, target: str) -> None:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    # One job on the connection's thread, whatever happens to this coroutine: the wait for the
    # lock never blocks the event loop, and the connection's own busy timeout (0 where its
    # statements run on the loop) is always restored before anything else uses it.
    refused = await driver._execute(_try_write_lock, driver._conn, SQLITE_LOCK_WAIT_MS)
    if refused is not None:  # "database is locked": writes would fail too
        raise DatabaseUnavailableError(
            target,
            f"OperationalError: {refused} (its write lock is held elsewhere; "
            f"waited {SQLITE_LOCK_WAIT_MS} ms)",
        )


def _try_write_lock(conn: sqlite3.Connection, wait_ms: int) -> str | None:
    """`BEGIN IMMEDIATE` waiting at most `wait_ms`, then `ROLLBACK` (nothing is written); the
    error if the lock could not be taken. Runs on the connection's thread."""
    row = conn.execute("PRAGMA busy_timeout").fetchone()
    saved_ms = int(row[0]) if row else 0
    conn.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
    try:
        if conn.in_transaction:  # the pool hands out connections with no transaction open
            conn.rollback()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return str(exc)
        conn.execute("ROLLBACK")
        return None
    finally:
        conn.execute(f"PRAGMA busy_timeout={saved_ms}")
