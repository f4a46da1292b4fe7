"""Fixtures for the outbox tests: a migrated database (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.infra.db import DatabaseSettings, create_engine, create_session_factory, migrate
from tests.infra.db.conftest import pg_admin_url, pg_url
from tests.infra.eventbus.conftest import client, prefix, redis_url, settings

__all__ = ["client", "pg_admin_url", "pg_url", "prefix", "redis_url", "settings"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a fresh database on the shared PostgreSQL (skipped if unreachable)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database at the newest revision."""
    url = database_url
    engine = create_engine(DatabaseSettings(url=url))
    await migrate(engine)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _traced(_tracing_runtime: object) -> None:
    """Every outbox test runs with the SDK set up: rows must carry real trace contexts."""
