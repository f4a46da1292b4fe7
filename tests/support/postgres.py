"""Throw-away PostgreSQL databases on the server of `TEST_DATABASE_URL`.

Every database is created here under a fresh name and dropped afterwards; nothing else on the
server is touched. An unset variable or an unreachable server skips the test with the reason
(fails it under `QT_REQUIRE_SERVICES=1`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.require import require_service

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def admin_url() -> str:
    """`TEST_DATABASE_URL`; skips the test (fails under `QT_REQUIRE_SERVICES=1`) when unset."""
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    require_service(
        bool(url),
        "PostgreSQL tests need TEST_DATABASE_URL "
        "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test); it is not set",
    )
    return url


def asyncpg_dsn(url: str) -> str:
    """The plain `postgresql://` DSN asyncpg accepts, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _url_of(admin: str, name: str) -> str:
    """The SQLAlchemy URL of database `name` on `admin`'s server."""
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


async def unreachable(url: str) -> str | None:
    """Why the server at `url` cannot be reached, or None when it answers."""
    import asyncpg

    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def require_postgres(url: str, error: str | None) -> None:
    """Skip (fail on CI) with the server's host and `error` unless `error` is None."""
    require_service(error is None, f"PostgreSQL at {make_url(url).host} unreachable: {error}")


async def _execute(admin: str, statements: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(admin), timeout=3)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{uuid.uuid4().hex[:12]}" for _ in range(count)]


async def _create(admin: str, names: list[str]) -> None:
    import asyncpg

    try:
        await _execute(admin, [f'CREATE DATABASE "{name}"' for name in names])
    except (OSError, asyncpg.PostgresError) as exc:
        require_postgres(admin, f"{type(exc).__name__}: {exc}")
        raise


async def _drop(admin: str, names: list[str]) -> None:
    await _execute(admin, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names])


@asynccontextmanager
async def scratch_database(prefix: str = "qt_test", admin: str | None = None) -> AsyncIterator[str]:
    """A fresh, empty database (its SQLAlchemy URL), dropped afterwards."""
    admin = admin or admin_url()
    names = _names(prefix, 1)
    await _create(admin, names)
    try:
        yield _url_of(admin, names[0])
    finally:
        await _drop(admin, names)


@contextmanager
def scratch_databases(
    count: int, prefix: str = "qt_test", admin: str | None = None
) -> Iterator[list[str]]:
    """`count` fresh databases for code outside an event loop (processes under test)."""
    admin = admin or admin_url()
    names = _names(prefix, count)
    asyncio.run(_create(admin, names))
    try:
        yield [_url_of(admin, name) for name in names]
    finally:
        asyncio.run(_drop(admin, names))


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of this test run only, logging every statement it receives."""

    directory: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c log_statement=all -c fsync=off -c shared_buffers=16MB"
        )
        self._pg_ctl("start", "-w", "-l", str(self.log_file), "-o", options)

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-m", "fast")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")
