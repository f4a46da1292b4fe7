"""SQLite statements run on the loop's thread, yet never hold the loop on a lock or a long read.

Real SQLite files throughout; a second, plain sqlite3 connection plays the other process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend.infra.db import (
    DatabaseSettings,
    DatabaseUnavailableError,
    create_engine,
    create_session_factory,
    session_scope,
)
from backend.infra.db._sqlite import CHECKPOINT_EVERY_COMMITS, reads_only
from tests.support.polling import eventually

COUNT_TO = 2_000_000
LONG_READ = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :top) "
    "SELECT count(*), sum(i) FROM n"
)


def _engine(path: Path, busy_timeout_ms: int = 10_000) -> AsyncEngine:
    settings = DatabaseSettings(
        url=f"sqlite+aiosqlite:///{path}",
        service_name="inline-tests",
        sqlite_busy_timeout_ms=busy_timeout_ms,
    )
    return create_engine(settings)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = _engine(tmp_path / "inline.db")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    yield engine
    await engine.dispose()


class Statements:
    """The thread each statement ran on, as SQLite's trace callback saw it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, sql: str) -> None:
        self.seen.append((sql, threading.get_ident()))

    def threads(self, prefix: str) -> list[int]:
        return [ident for sql, ident in self.seen if sql.lstrip().upper().startswith(prefix)]


@asynccontextmanager
async def traced(conn: AsyncConnection) -> AsyncIterator[Statements]:
    """Trace the statements of `conn`'s sqlite3 connection (set on its own thread)."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    statements = Statements()
    await driver.set_trace_callback(statements)
    try:
        yield statements
    finally:
        await driver.set_trace_callback(None)


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the file's write lock, as another process would."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


@asynccontextmanager
async def ticking() -> AsyncIterator[list[int]]:
    """A task that counts its turns of the event loop while the block runs."""
    ticks = [0]

    async def tick() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(tick(), name="ticker")
    try:
        yield ticks
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_statements_and_the_commit_run_on_the_loop_thread(engine: AsyncEngine) -> None:
    loop_thread = threading.get_ident()
    async with engine.connect() as conn, traced(conn) as statements:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('a')"))
        await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), [{"b": "b"}, {"b": "c"}])
        await conn.execute(text("UPDATE notes SET body = upper(body)"))
        bodies = (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).scalars()
        assert list(bodies) == ["A", "B", "C"]
        await conn.commit()
    for prefix in ("INSERT", "UPDATE", "SELECT", "COMMIT"):
        assert statements.threads(prefix), prefix
        assert set(statements.threads(prefix)) == {loop_thread}, prefix


async def test_a_write_waits_for_the_lock_on_the_loop_then_succeeds(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    loop_thread = threading.get_ident()
    sessions = create_session_factory(engine)
    with write_lock_held(tmp_path / "inline.db") as holder:
        async with engine.connect() as conn, traced(conn) as statements, ticking() as ticks:

            async def write() -> None:
                await conn.execute(text("INSERT INTO notes (body) VALUES ('after the lock')"))
                await conn.commit()

            writer = asyncio.create_task(write())
            await eventually(lambda: statements.threads("INSERT"), what="a first attempt")
            seen = ticks[0]
            await eventually(lambda: ticks[0] >= seen + 5, what="the loop to keep ticking")
            assert not writer.done()  # still waiting for the lock, and the loop runs
            holder.execute("ROLLBACK")
            await writer
        # Every attempt ran on the loop's thread: it waited between them, not inside SQLite.
        assert len(statements.threads("INSERT")) > 1
        assert set(statements.threads("INSERT")) == {loop_thread}
    async with session_scope(sessions) as session:
        bodies = (await session.execute(text("SELECT body FROM notes"))).scalars()
        assert list(bodies) == ["after the lock"]


async def test_a_write_fails_as_before_when_the_lock_outlasts_the_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "short.db"
    engine = _engine(path, busy_timeout_ms=300)
    loop_thread = threading.get_ident()
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        sessions = create_session_factory(engine)
        with write_lock_held(path):
            async with engine.connect() as conn, traced(conn) as statements, ticking() as ticks:
                seen = ticks[0]
                with pytest.raises(OperationalError, match="database is locked") as raised:
                    await conn.execute(text("INSERT INTO notes (body) VALUES ('locked out')"))
                assert isinstance(raised.value.orig, sqlite3.OperationalError)
                assert ticks[0] > seen  # the loop ran while the write waited
                await conn.rollback()
            assert set(statements.threads("INSERT")) == {loop_thread}
            # Through a unit of work it is the usual "unavailable" (a 503 in a service).
            with pytest.raises(DatabaseUnavailableError, match="database is locked"):
                async with session_scope(sessions) as session:
                    await session.execute(text("INSERT INTO notes (body) VALUES ('x')"))
        async with session_scope(sessions) as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('free again')"))
    finally:
        await engine.dispose()


async def test_a_stale_snapshot_is_not_retried(engine: AsyncEngine, tmp_path: Path) -> None:
    """SQLITE_BUSY_SNAPSHOT: the transaction must start again; waiting would not help."""
    async with engine.connect() as conn, traced(conn) as statements:
        await conn.exec_driver_sql("BEGIN")
        await conn.exec_driver_sql("SELECT count(*) FROM notes")  # the snapshot
        other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
        other.execute("INSERT INTO notes (body) VALUES ('elsewhere')")
        other.close()
        with pytest.raises(OperationalError, match="database is locked") as raised:
            await conn.exec_driver_sql("INSERT INTO notes (body) VALUES ('stale')")
        assert raised.value.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY_SNAPSHOT  # type: ignore[union-attr]
        assert len(statements.threads("INSERT")) == 1
        await conn.rollback()


async def test_a_long_read_moves_off_the_loop_and_keeps_the_transaction(
    engine: AsyncEngine,
) -> None:
    loop_thread = threading.get_ident()
    async with engine.connect() as conn, traced(conn) as statements:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('before the read')"))
        async with ticking() as ticks:
            seen = ticks[0]
            row = (await conn.execute(text(LONG_READ), {"top": COUNT_TO})).one()
            assert ticks[0] >= seen + 2  # the loop kept turning while the read ran
        assert tuple(row) == (COUNT_TO, COUNT_TO * (COUNT_TO + 1) // 2)
        # It started on the loop's thread, was interrupted, and ran again on the connection's.
        threads = statements.threads("WITH")
        assert len(threads) == 2 and threads[0] == loop_thread and threads[1] != loop_thread
        # The interrupted read rolled nothing back: the insert before it is still there.
        await conn.commit()
        bodies = (await conn.execute(text("SELECT body FROM notes"))).scalars()
        assert list(bodies) == ["before the read"]
        # Back on the loop's thread for the next statements.
        assert statements.threads("SELECT")[-1] == loop_thread


async def test_a_long_write_is_never_interrupted(engine: AsyncEngine) -> None:
    loop_thread = threading.get_ident()
    write = (
        "INSERT INTO notes (body) "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
        "SELECT 'n' || i FROM n"
    )
    async with engine.connect() as conn, traced(conn) as statements:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('first')"))
        await conn.execute(text(write))
        await conn.commit()
        count = (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one()
    assert count == 200_001
    assert statements.threads("INSERT") == [loop_thread, loop_thread]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", True),
        ("  select * from t /*traceparent='00-ab-cd-01'*/", True),
        ("/* leading */ -- note\n SELECT 1", True),
        ("VALUES (1)", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
        ("with x as (select 1) delete from t where id in x", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1 RETURNING a", False),
        ("PRAGMA journal_mode", False),
        ("BEGIN IMMEDIATE", False),
    ],
)
def test_only_statements_that_cannot_write_count_as_reads(sql: str, expected: Any) -> None:
    assert reads_only(sql) is expected


async def test_wal_checkpoints_run_on_the_connection_thread(engine: AsyncEngine) -> None:
    loop_thread = threading.get_ident()
    async with engine.connect() as conn, traced(conn) as statements:
        for n in range(CHECKPOINT_EVERY_COMMITS):
            await conn.execute(text("INSERT INTO notes (body) VALUES (:n)"), {"n": str(n)})
            await conn.commit()
        await eventually(lambda: statements.threads("PRAGMA WAL_CHECKPOINT"), what="a checkpoint")
        assert loop_thread not in statements.threads("PRAGMA WAL_CHECKPOINT")
        assert set(statements.threads("COMMIT")) == {loop_thread}
        # A statement queued behind it runs after it, and the next one on the loop's thread.
        for _ in range(2):
            count = (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one()
            assert count == CHECKPOINT_EVERY_COMMITS
        assert statements.threads("SELECT COUNT")[-1] == loop_thread
