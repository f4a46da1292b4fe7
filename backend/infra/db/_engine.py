"""The async engine, the session factory and the unit-of-work helper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from backend.infra.observability import get_logger

from ._errors import is_database_error, translate_error
from ._instrument import instrument_engine
from ._settings import DatabaseSettings
from ._sqlite import connect as sqlite_connect

log = get_logger(__name__)


def describe(url: URL) -> str:
    """A URL fit for messages and logs: driver suffix and password removed."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _on_sqlite_connect(busy_timeout_ms: int, wal: bool) -> Any:
    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers run while one writer writes; the busy timeout makes a second
            # writer wait instead of failing at once with "database is locked". A connection
            # that waits on the event loop itself is given 0: SQLite would sleep on the loop.
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable across application crashes in WAL mode, and much faster.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return configure


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An instrumented async engine for `settings.url` (SQLite or PostgreSQL).

    Every statement gets a CLIENT span and, with `sql_commenter` on, a trailing
    `/*traceparent='…'*/`. PostgreSQL connections are pinged before use, so the engine recovers
    by itself once a server that went away is back. SQLite's are not: a file has no server to
    lose, an error of the file shows on the statement itself, and on aiosqlite the ping costs
    four hops to the connection's thread on every transaction.
    """
    url = settings.sqlalchemy_url
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {"echo": settings.echo, "pool_pre_ping": backend != "sqlite"}
    connect_args: dict[str, Any] = {}
    sqlite_file = _sqlite_file(url) if backend == "sqlite" else None
    sqlite_busy_timeout_ms = settings.sqlite_busy_timeout_ms
    if backend == "sqlite":
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(pool_size=settings.pool_size, max_overflow=settings.max_overflow)
            kwargs.update(pool_timeout=settings.pool_timeout_s)
        connect_args["timeout"] = settings.sqlite_busy_timeout_ms / 1000.0
        if url.get_driver_name() == "aiosqlite":
            # Statements on the event loop's thread instead of four hops each to the
            # connection's; it waits out `timeout` for a lock itself, on the loop.
            connect_args["async_creator_fn"] = sqlite_connect
            sqlite_busy_timeout_ms = 0
    else:
        kwargs.update(
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_recycle=settings.pool_recycle_s,
        )
        connect_args["timeout"] = settings.connect_timeout_s
        connect_args["server_settings"] = {"application_name": settings.service_name[:63]}
        if settings.sql_commenter:
            # A prepared statement's text is fixed when it is parsed, and the server reports
            # that text for every later execution; a cached statement would show a stale
            # traceparent, and a commented text never repeats, so a cache would only churn.
            # With both caches off, asyncpg prepares each statement unnamed: nothing piles up
            # on the server, at the price of one extra round trip per statement.
            connect_args["prepared_statement_cache_size"] = 0
            connect_args["statement_cache_size"] = 0
    engine = _create_async_engine(url, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        event.listen(
            engine.sync_engine,
            "connect",
            _on_sqlite_connect(sqlite_busy_timeout_ms, wal=sqlite_file is not None),
        )
    instrument_engine(
        engine.sync_engine,
        settings.service_name,
        settings.sql_commenter,
        log_statements=settings.log_statements,
    )
    log.info(
        "database engine created",
        database=describe(url),
        service=settings.service_name,
        sql_commenter=settings.sql_commenter,
    )
    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions bound to `engine`; objects stay readable after commit (no implicit reload)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A unit of work: one session and transaction, committed on success, rolled back on error.

    Database failures leave as `DatabaseError`s (`DatabaseUnavailableError` when the database
    is down, `IntegrityViolationError` for a duplicate key…) chained to the driver's error.
    """
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException as error:
            await _rollback_quietly(session)
            if isinstance(error, Exception) and is_database_error(error):
                raise translate_error(error, _target_of(session)) from error
            raise


async def _rollback_quietly(session: AsyncSession) -> None:
    try:
        await session.rollback()
    # The rollback of a transaction on a connection that just died fails too; the first error
    # is the one that explains what happened, so this one is only logged.
    except Exception as error:
        log.warning("rollback failed", error=f"{type(error).__name__}: {error}")


def _target_of(session: AsyncSession) -> str:
    bind = session.bind
    if isinstance(bind, AsyncEngine):
        return describe(bind.url)
    if isinstance(bind, AsyncConnection):
        return describe(bind.engine.url)
    return "database"
