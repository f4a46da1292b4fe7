"""Fixtures for the outbox tests: a migrated database (SQLite, and PostgreSQL when reachable).

`database_url`, Redis, the prefix and the event-bus settings come from `tests.support.plugin`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.infra.db import DatabaseSettings, create_engine, create_session_factory, migrate


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
