"""`DB_LOG_STATEMENTS`: each statement is logged as sent, its traceparent comment included."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from sqlalchemy import text

from backend.infra.db import DatabaseSettings, create_engine, load_database_settings
from backend.infra.observability import get_tracer

tracer = get_tracer("tests.infra.db")
TRACEPARENT = re.compile(r"/\*traceparent='00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}'\*/")


def _statements(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r._fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "backend.infra.db.statements"
    ]


async def test_statements_are_logged_with_their_traceparent_when_switched_on(
    sqlite_url: str, span_exporter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url, log_statements=True))
    caplog.set_level(logging.INFO, logger="backend.infra.db.statements")
    try:
        with tracer.start_as_current_span("work") as span:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 42"))
    finally:
        await engine.dispose()
    (logged,) = [f for f in _statements(caplog) if f["statement"].startswith("SELECT 42")]
    match = TRACEPARENT.search(logged["statement"])
    assert match is not None, logged
    assert match.group(1) == f"{span.get_span_context().trace_id:032x}"
    assert logged["db_system"] == "sqlite"


async def test_statements_are_not_logged_by_default(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DB_LOG_STATEMENTS", raising=False)
    engine = create_engine(load_database_settings("db-tests", url=sqlite_url))
    caplog.set_level(logging.INFO, logger="backend.infra.db.statements")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 43"))
    finally:
        await engine.dispose()
    assert _statements(caplog) == []


def test_the_switch_is_read_from_db_log_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_LOG_STATEMENTS", "true")
    assert load_database_settings("db-tests", url="sqlite+aiosqlite:///x.db").log_statements
