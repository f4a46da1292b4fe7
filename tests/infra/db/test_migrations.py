"""Migrations: up, down and up again on SQLite and PostgreSQL, matching the models, and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from backend.infra.db import (
    Base,
    DatabaseSettings,
    create_engine,
    current_revision,
    downgrade,
    head_revision,
    migrate,
)

REPO = Path(__file__).resolve().parents[3]


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_up_down_up_leaves_the_schema_the_models_describe(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        assert await current_revision(engine) is None
        assert await migrate(engine) == head_revision()
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables) | {"alembic_version"}
            assert await conn.run_sync(_diff) == []

        assert await downgrade(engine, "base") is None
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) <= {"alembic_version"}

        assert await migrate(engine) == head_revision()
        assert await migrate(engine) == head_revision(), "a second start is a no-op"
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_concurrent_starts_migrate_once(database_url: str) -> None:
    engines = [create_engine(DatabaseSettings(url=database_url)) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(engine) for engine in engines))
        assert results == [head_revision()] * 3
    finally:
        for engine in engines:
            await engine.dispose()


async def test_migrate_accepts_a_url(sqlite_url: str) -> None:
    assert await migrate(sqlite_url) == head_revision()
    assert await current_revision(sqlite_url) == head_revision()


def test_cli_upgrade_current_downgrade(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "DATABASE_URL": url}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "backend.infra.db", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    assert run("current") == "base"
    assert run("upgrade") == f"at {head_revision()}"
    assert run("current") == head_revision()
    assert run("downgrade", "base") == "at base"
    assert run("heads") == head_revision()


def test_cli_reports_an_unreachable_database_in_one_line() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.infra.db",
            "--url",
            "postgresql+asyncpg://postgres@127.0.0.1:1/none",
            "current",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "error: database postgresql://postgres@127.0.0.1:1/none is unavailable" in done.stderr
