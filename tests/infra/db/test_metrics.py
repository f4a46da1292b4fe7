"""Prometheus metrics: statement durations by operation and connection-pool gauges."""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text

from backend.infra.db import DatabaseSettings, create_engine


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_statement_durations_are_counted_by_operation(database_url: str) -> None:
    system = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    labels = {"system": system, "operation": "SELECT"}
    before = _sample("db_client_operation_duration_seconds_count", labels)
    errors_before = _sample("db_client_operation_errors_total", {**labels, "error": "query"})
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        async with engine.connect() as conn:
            for _ in range(3):
                await conn.execute(text("SELECT 1"))
            # Only the error counter matters here, not the exception.
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT * FROM missing_table"))
    finally:
        await engine.dispose()
    assert _sample("db_client_operation_duration_seconds_count", labels) >= before + 4
    assert _sample("db_client_operation_errors_total", {**labels, "error": "query"}) == (
        errors_before + 1
    )


async def test_pool_gauges_follow_checked_out_connections(database_url: str) -> None:
    name = f"pool-test-{id(database_url)}"
    engine = create_engine(DatabaseSettings(url=database_url, service_name=name, pool_size=3))
    pool = {"pool": name}
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            assert _sample("db_client_connections_checked_out", pool) == 1
            assert _sample("db_client_connections_pool_size", pool) == 3
            assert _sample("db_client_connections_overflow", pool) == 0
        assert _sample("db_client_connections_checked_out", pool) == 0
        exposition = generate_latest(REGISTRY).decode()
        assert f'db_client_connections_checked_out{{pool="{name}"}} 0.0' in exposition
    finally:
        await engine.dispose()
