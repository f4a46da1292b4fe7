"""Every statement: a CLIENT span, and the span's traceparent in the SQL the server received."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.infra.db import (
    DatabaseSettings,
    create_engine,
    create_session_factory,
    migrate,
    session_scope,
)
from backend.infra.db.models import OrderRecord
from backend.infra.observability import get_tracer
from tests.support.factories import order_record
from tests.support.polling import eventually
from tests.support.postgres import PrivateCluster, asyncpg_dsn

TRACEPARENT = re.compile(r"/\*traceparent='00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})'\*/")
tracer = get_tracer("tests.infra.db")


def _order(client_order_id: str) -> OrderRecord:
    return order_record(
        client_order_id, symbol="ETHUSDT", side="SELL", quantity="1.5", time_in_force="IOC"
    )


def _client_spans(exporter: Any) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=database_url, service_name="db-tests"))
    await migrate(engine)
    yield engine
    await engine.dispose()


async def test_each_statement_is_a_client_span_with_db_attributes(
    engine: AsyncEngine, span_exporter: Any
) -> None:
    sessions = create_session_factory(engine)
    with tracer.start_as_current_span("place order") as parent:
        async with session_scope(sessions) as session:
            session.add(_order("qt-span-1"))
        async with session_scope(sessions) as session:
            await session.execute(
                select(OrderRecord).where(OrderRecord.client_order_id == "qt-span-1")
            )
    spans = _client_spans(span_exporter)
    by_name = {s.name: s for s in spans}
    assert {"INSERT orders", "SELECT orders"} <= set(by_name)
    insert = by_name["INSERT orders"]
    assert insert.parent.span_id == parent.get_span_context().span_id
    assert insert.context.trace_id == parent.get_span_context().trace_id
    attrs = dict(insert.attributes)
    system = engine.url.get_backend_name()
    assert attrs["db.system.name"] == system
    assert attrs["db.operation.name"] == "INSERT"
    assert attrs["db.collection.name"] == "orders"
    assert attrs["db.namespace"] == engine.url.database
    assert attrs["db.query.text"].startswith("INSERT INTO orders")
    assert "traceparent" not in attrs["db.query.text"], "the comment is not part of the query"
    if system == "postgresql":
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["server.port"] == (engine.url.port or 5432)
    else:
        assert "server.address" not in attrs
    assert by_name["SELECT orders"].attributes["db.operation.name"] == "SELECT"


async def test_batch_size_only_for_real_batches_and_spans_named_by_the_query_summary(
    engine: AsyncEngine, span_exporter: Any
) -> None:
    sessions = create_session_factory(engine)
    async with session_scope(sessions) as session:
        session.add(_order("qt-batch-1"))
    async with engine.begin() as conn:
        await conn.execute(
            OrderRecord.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "client_order_id": f"qt-batch-{n}",
                    "symbol": "ETHUSDT",
                    "side": "SELL",
                    "order_type": "MARKET",
                    "quantity": Decimal("1"),
                    "time_in_force": "IOC",
                    "status": "NEW",
                }
                for n in (2, 3, 4)
            ],
        )
        await conn.execute(text("WITH t AS (SELECT 1 AS x) SELECT x FROM t"))
    inserts = [s for s in _client_spans(span_exporter) if "orders" in s.name and "INSERT" in s.name]
    single = [s for s in inserts if s.name == "INSERT orders"]
    assert single, [s.name for s in inserts]
    # One row inserted: no batch size, whatever the driver's parameter tuple holds.
    assert all("db.operation.batch.size" not in s.attributes for s in single)
    (batch,) = [s for s in inserts if "db.operation.batch.size" in s.attributes]
    assert batch.attributes["db.operation.batch.size"] == 3
    assert batch.name == batch.attributes["db.query.summary"] == "BATCH INSERT orders"
    (cte,) = [s for s in _client_spans(span_exporter) if "WITH t" in s.attributes["db.query.text"]]
    assert cte.name == cte.attributes["db.query.summary"] == "SELECT SELECT"
    # Not parsed out of the text: a text() statement has no operation or collection name.
    assert "db.operation.name" not in cte.attributes
    assert "db.collection.name" not in cte.attributes


async def test_failed_statement_span_records_the_error(
    engine: AsyncEngine, span_exporter: Any
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the span is what is under test here
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    (span,) = [
        s
        for s in _client_spans(span_exporter)
        if "no_such_table" in s.attributes.get("db.query.text", "")
    ]
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"]
    if engine.url.get_backend_name() == "postgresql":
        assert span.attributes["db.response.status_code"] == "42P01"


async def test_sqlite_itself_receives_the_traceparent(sqlite_url: str, span_exporter: Any) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    try:
        seen: list[str] = []
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # SQLite's own trace hook: the statements as the library executed them.
            await raw.driver_connection.set_trace_callback(seen.append)  # type: ignore[union-attr]
            with tracer.start_as_current_span("work"):
                await conn.execute(text("SELECT 42"))
            await raw.driver_connection.set_trace_callback(None)  # type: ignore[union-attr]
    finally:
        await engine.dispose()
    (span,) = [
        s for s in _client_spans(span_exporter) if s.attributes["db.query.text"] == "SELECT ?"
    ]
    ran = [s for s in seen if s.startswith("SELECT 42")]
    assert ran == [f"SELECT 42 /*traceparent='{_traceparent(span)}'*/"]


def _traceparent(span: Any) -> str:
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


async def test_postgresql_sees_the_traceparent_in_pg_stat_activity(
    pg_url: str, span_exporter: Any
) -> None:
    engine = create_engine(DatabaseSettings(url=pg_url, service_name="db-tests"))
    observer = await asyncpg.connect(asyncpg_dsn(pg_url))
    seen: list[str] = []

    async def statement_is_running() -> bool:
        rows = await observer.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%' AND state = 'active'"
        )
        seen.extend(r["query"] for r in rows)
        return bool(rows)

    try:
        with tracer.start_as_current_span("slow work") as parent:
            async with engine.connect() as conn:
                running = asyncio.create_task(conn.execute(text("SELECT pg_sleep(0.6)")))
                await eventually(statement_is_running, timeout_s=5)
                await running
    finally:
        await observer.close()
        await engine.dispose()
    match = TRACEPARENT.search(seen[0])
    assert match, f"no traceparent comment in what PostgreSQL saw: {seen[0]!r}"
    trace_id, span_id, flags = match.groups()
    assert int(trace_id, 16) == parent.get_span_context().trace_id
    (db_span,) = [
        s for s in _client_spans(span_exporter) if "pg_sleep" in s.attributes["db.query.text"]
    ]
    assert int(span_id, 16) == db_span.context.span_id, "the comment names the CLIENT span"
    assert int(flags, 16) & 1, "sampled flag set"


async def test_postgresql_log_shows_every_statement_with_its_traceparent(
    private_cluster: PrivateCluster, span_exporter: Any
) -> None:
    engine = create_engine(DatabaseSettings(url=private_cluster.url, service_name="db-tests"))
    try:
        with tracer.start_as_current_span("logged work") as parent:
            async with engine.connect() as conn:
                for n in range(3):
                    await conn.execute(
                        text("SELECT CAST(:n AS integer) AS marker_for_log"), {"n": n}
                    )
    finally:
        await engine.dispose()
    trace_hex = f"{parent.get_span_context().trace_id:032x}"
    lines = [line for line in private_cluster.log_text().splitlines() if "marker_for_log" in line]
    logged = [line for line in lines if trace_hex in line]
    # asyncpg uses the extended protocol: the server logs each execution of the unnamed
    # statement with the text it parsed, comment included.
    assert len(logged) == 3, lines
    assert all("execute <unnamed>" in line for line in logged), logged
    span_ids = {TRACEPARENT.search(line).group(2) for line in logged}  # type: ignore[union-attr]
    assert len(span_ids) == 3, "one comment per statement, each naming its own span"


async def test_commented_statements_do_not_pile_up_as_prepared_statements(pg_url: str) -> None:
    commented = create_engine(DatabaseSettings(url=pg_url))
    plain = create_engine(DatabaseSettings(url=pg_url, sql_commenter=False))
    try:
        for engine, expected_cached in ((commented, False), (plain, True)):
            async with engine.connect() as conn:
                for n in range(25):
                    with tracer.start_as_current_span(f"op {n}"):
                        await conn.execute(text("SELECT 1 + :n"), {"n": n})
                prepared = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
            if expected_cached:
                assert prepared and prepared >= 1, "without comments the statement cache works"
            else:
                assert prepared == 0, f"{prepared} prepared statements left on the server"
    finally:
        await commented.dispose()
        await plain.dispose()


async def test_a_statement_outside_any_trace_is_a_root_span_and_says_so(
    sqlite_url: str, span_exporter: Any
) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    try:
        seen: list[str] = []
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.set_trace_callback(seen.append)  # type: ignore[union-attr]
            await conn.execute(text("SELECT 7"))
    finally:
        await engine.dispose()
    (span,) = [
        s for s in _client_spans(span_exporter) if s.attributes["db.query.text"] == "SELECT ?"
    ]
    assert span.parent is None
    assert f"SELECT 7 /*traceparent='{_traceparent(span)}'*/" in seen


async def test_commenter_can_be_switched_off(sqlite_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url, sql_commenter=False))
    try:
        seen: list[str] = []
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.set_trace_callback(seen.append)  # type: ignore[union-attr]
            with tracer.start_as_current_span("work"):
                await conn.execute(text("SELECT 8"))
    finally:
        await engine.dispose()
    assert "SELECT 8" in seen


async def test_a_statements_span_is_exported_without_an_sdk_span_per_statement(
    engine: AsyncEngine, span_exporter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import Tracer

    sessions = create_session_factory(engine)
    sdk_spans: list[str] = []
    real = Tracer.start_span

    def counted(self: Tracer, name: str, *args: Any, **kwargs: Any) -> Any:
        sdk_spans.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", counted)
    with tracer.start_as_current_span("place order") as parent:
        async with session_scope(sessions) as session:
            session.add(_order("qt-lean-1"))
    assert sdk_spans == ["place order"]  # the statements' spans are lean ones
    (insert,) = [s for s in _client_spans(span_exporter) if s.name == "INSERT orders"]
    assert insert.parent.span_id == parent.get_span_context().span_id
    assert dict(insert.attributes)["db.operation.name"] == "INSERT"
    assert insert.end_time >= insert.start_time
