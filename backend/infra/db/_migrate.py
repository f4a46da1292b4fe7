"""Apply, revert and inspect the Alembic migrations, from a service lifespan or the CLI."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backend.infra.observability import get_logger

from ._engine import create_engine, describe
from ._errors import DatabaseError, MigrationError, is_database_error, translate_error
from ._settings import DatabaseSettings

log = get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
_PG_LOCK_KEY = 0x5154_4442  # "QTDB"

EngineOrUrl = AsyncEngine | DatabaseSettings | str


def alembic_config() -> Config:
    """The Alembic configuration of the project's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision in the migration scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the project always ships its initial revision
        raise MigrationError("no migration scripts found")
    return head


@asynccontextmanager
async def _engine_for(target: EngineOrUrl) -> AsyncIterator[AsyncEngine]:
    if isinstance(target, AsyncEngine):
        yield target
        return
    settings = target if isinstance(target, DatabaseSettings) else DatabaseSettings(url=target)
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serialise SQLite migrations across processes, taken before any connection is opened.

    SQLite takes its write lock lazily, after Alembic has read the current revision, and a
    connection opened while another process migrates waits only `busy_timeout` (its WAL pragma
    needs the lock), so the file lock must come first.
    """
    url = engine.url
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(f"{database}.migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _pg_lock(conn: AsyncConnection) -> None:
    """Serialise PostgreSQL migrations; released when the migration transaction ends."""
    if conn.engine.url.get_backend_name() == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _apply(target: EngineOrUrl, action: str, revision: str) -> str | None:
    async with _engine_for(target) as engine:
        where = describe(engine.url)
        try:
            async with _sqlite_file_lock(engine), engine.begin() as conn:
                await _pg_lock(conn)
                before = await conn.run_sync(_current)
                await conn.run_sync(_run, action, revision)
                after = await conn.run_sync(_current)
        except DatabaseError:
            raise
        except Exception as error:
            if is_database_error(error):
                raise translate_error(error, where) from error
            raise MigrationError(f"{action} to {revision} failed on {where}: {error}") from error
        if before != after:
            log.info("database migrated", database=where, action=action, before=before, after=after)
        return after


async def migrate(target: EngineOrUrl, revision: str = "head") -> str | None:
    """Bring the schema up to `revision` (default: the newest); returns the revision now in force.

    Safe to call on every start (a no-op when up to date) and from several processes at once.
    `target` is an engine, settings, or a URL.
    """
    return await _apply(target, "upgrade", revision)


async def downgrade(target: EngineOrUrl, revision: str) -> str | None:
    """Revert the schema to `revision` (`"base"` removes every table, `"-1"` one step)."""
    return await _apply(target, "downgrade", revision)


async def current_revision(target: EngineOrUrl) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with _engine_for(target) as engine:
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_current)
        except Exception as error:
            if is_database_error(error):
                raise translate_error(error, describe(engine.url)) from error
            raise
