"""Down databases: readiness answers 503 naming the database, writes fail clearly, then recover."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from backend.infra.db import (
    DatabaseSettings,
    DatabaseUnavailableError,
    IntegrityViolationError,
    QueryError,
    create_engine,
    create_session_factory,
    database_readiness_check,
    migrate,
    session_scope,
)
from backend.infra.db.models import OrderRecord
from backend.infra.observability import add_health_endpoints
from tests.support.factories import order_record
from tests.support.polling import eventually
from tests.support.postgres import PrivateCluster

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"


def _order(client_order_id: str) -> OrderRecord:
    return order_record(client_order_id)


async def _ready(app: FastAPI) -> tuple[int, dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/health/ready")
    return response.status_code, response.json()


async def test_readiness_is_503_naming_an_unreachable_database() -> None:
    engine = create_engine(DatabaseSettings(url=UNREACHABLE, connect_timeout_s=2))
    app = FastAPI()
    add_health_endpoints(app, [database_readiness_check(engine)])
    try:
        status, body = await _ready(app)
    finally:
        await engine.dispose()
    assert status == 503
    assert body["failing"] == ["database"]
    error = body["checks"]["database"]["error"]
    assert error.startswith("DatabaseUnavailableError: database postgresql://postgres@127.0.0.1:1")


async def test_write_to_an_unreachable_database_raises_a_translated_error() -> None:
    engine = create_engine(DatabaseSettings(url=UNREACHABLE, connect_timeout_s=2))
    sessions = create_session_factory(engine)
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with session_scope(sessions) as session:
                session.add(_order("qt-nowhere"))
    finally:
        await engine.dispose()
    assert caught.value.target == "postgresql://postgres@127.0.0.1:1/nowhere"
    assert caught.value.__cause__ is not None, "the driver's error is chained"


async def test_duplicate_client_order_id_is_an_integrity_violation(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    sessions = create_session_factory(engine)
    try:
        await migrate(engine)
        async with session_scope(sessions) as session:
            session.add(_order("qt-dup"))
        with pytest.raises(IntegrityViolationError) as caught:
            async with session_scope(sessions) as session:
                session.add(_order("qt-dup"))
        async with session_scope(sessions) as session:
            count = len((await session.execute(select(OrderRecord))).scalars().all())
    finally:
        await engine.dispose()
    assert count == 1, "the failed unit of work was rolled back"
    assert "client_order_id" in str(caught.value)
    if database_url.startswith("postgresql"):
        assert caught.value.constraint == "uq_orders_client_order_id"


async def test_bad_statement_is_a_query_error_and_caller_errors_pass_through(
    sqlite_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    sessions = create_session_factory(engine)
    try:
        with pytest.raises(QueryError, match="no such table"):
            async with session_scope(sessions) as session:
                await session.execute(text("SELECT * FROM not_migrated_yet"))
        with pytest.raises(ZeroDivisionError):
            async with session_scope(sessions):
                _ = 1 / 0
    finally:
        await engine.dispose()


async def test_service_recovers_when_the_database_returns(private_cluster: PrivateCluster) -> None:
    engine = create_engine(
        DatabaseSettings(url=private_cluster.url, service_name="recovery", connect_timeout_s=2)
    )
    sessions = create_session_factory(engine)
    app = FastAPI()
    add_health_endpoints(app, [database_readiness_check(engine, timeout_s=3)])
    try:
        await migrate(engine)
        async with session_scope(sessions) as session:
            session.add(_order("qt-before"))
        assert (await _ready(app))[0] == 200

        private_cluster.stop()
        try:
            status, body = await _ready(app)
            assert status == 503
            assert "DatabaseUnavailableError" in body["checks"]["database"]["error"]
            with pytest.raises(DatabaseUnavailableError):
                async with session_scope(sessions) as session:
                    session.add(_order("qt-while-down"))
        finally:
            private_cluster.start()

        async def ready_again() -> bool:
            return (await _ready(app))[0] == 200

        await eventually(ready_again, timeout_s=15, interval_s=0.2)
        async with session_scope(sessions) as session:
            session.add(_order("qt-after"))
        async with session_scope(sessions) as session:
            ids = set((await session.execute(select(OrderRecord.client_order_id))).scalars())
    finally:
        await engine.dispose()
    assert ids == {"qt-before", "qt-after"}


# Holds SQLite's write lock (as another process would) until its stdin closes.
HOLD_LOCK = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "c.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


async def test_a_sqlite_write_lock_held_elsewhere_makes_readiness_fail_then_pass(
    sqlite_url: str,
) -> None:
    """WAL keeps `SELECT 1` working under another process's write lock; readiness must not."""
    engine = create_engine(
        DatabaseSettings(url=sqlite_url, service_name="locked", sqlite_busy_timeout_ms=1000)
    )
    sessions = create_session_factory(engine)
    app = FastAPI()
    add_health_endpoints(app, [database_readiness_check(engine, timeout_s=3)])
    holder = None
    try:
        await migrate(engine)
        assert (await _ready(app))[0] == 200
        path = sqlite_url.split(":///", 1)[1]
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        status, body = await _ready(app)
        assert status == 503
        error = body["checks"]["database"]["error"]
        assert "DatabaseUnavailableError" in error and "database is locked" in error
        # A write in the meantime fails as "unavailable" (the service answers 503), not a 500.
        with pytest.raises(DatabaseUnavailableError):
            async with session_scope(sessions) as session:
                session.add(_order("qt-while-locked"))

        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        assert (await _ready(app))[0] == 200
        async with session_scope(sessions) as session:
            session.add(_order("qt-after"))
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await engine.dispose()
