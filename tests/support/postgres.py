"""Throw-away PostgreSQL databases on the server `TEST_DATABASE_URL` names, for tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url

from tests.conftest import require_service

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)


def asyncpg_dsn(url: str) -> str:
    """The plain `postgresql://` DSN asyncpg accepts, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def scratch_database(prefix: str = "qt_test", admin: str | None = None) -> AsyncIterator[str]:
    """A fresh, empty database (its SQLAlchemy URL), dropped afterwards; skips, or fails on CI,
    when the server is unreachable. Never touches a database it did not create."""
    import asyncpg

    admin = admin or admin_url()
    try:
        conn = await asyncpg.connect(asyncpg_dsn(admin), timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
        require_service(False, f"PostgreSQL at {make_url(admin).host} unreachable: {exc!r}")
        raise
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
