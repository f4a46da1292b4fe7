"""What a transaction costs before its first statement: a ping on PostgreSQL, none on SQLite."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from backend.infra.db import DatabaseSettings, create_engine, create_session_factory, session_scope


async def test_sqlite_checkouts_are_not_pinged_postgresql_ones_are(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(DatabaseSettings(url=database_url, service_name="db-tests"))
    dialect = engine.sync_engine.dialect
    pings: list[Any] = []
    ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    sessions = create_session_factory(engine)
    try:
        for _ in range(3):
            async with session_scope(sessions) as session:
                await session.execute(select(1))
    finally:
        await engine.dispose()
    if engine.url.get_backend_name() == "sqlite":
        assert pings == []
    else:
        assert len(pings) >= 2  # a server that went away is noticed before the statement
