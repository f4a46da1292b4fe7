"""The suite's shared fixtures, loaded once by `pytest_plugins` in `tests/conftest.py`.

- Redis: `redis_url` (session; `TEST_REDIS_URL` or an embedded server), `prefix` (a key
  prefix of one test, its keys deleted afterwards), `settings` (event-bus settings on that
  prefix with short timings) and `client` (an asyncio Redis client).
- Databases: `sqlite_url` (a file in the test's directory), `pg_admin_url` (the server of
  `TEST_DATABASE_URL`, checked once), `pg_url` (a fresh database there, dropped afterwards) and
  `database_url` (each test using it runs once on SQLite and once on PostgreSQL).
- Services: `harness`, a service run in-process on the test's prefix and database, and
  `harness_database`, the same on `database_url` (SQLite, then PostgreSQL).

An unreachable server skips the test with the reason, or fails it under `QT_REQUIRE_SERVICES=1`.
Helpers that are not fixtures live in the other `tests.support` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backend.infra.eventbus import EventBusSettings, create_redis_client
from tests.support.inprocess import API_TOKEN, ServiceHarness
from tests.support.postgres import (
    PG_BIN,
    PrivateCluster,
    admin_url,
    require_postgres,
    scratch_database,
    unreachable,
)
from tests.support.procs import free_port
from tests.support.redis import RedisUnavailable, delete_prefixed, new_prefix, redis_server
from tests.support.require import require_service

# Redis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`TEST_REDIS_URL` when set and reachable (CI), else an embedded server for the session."""
    try:
        with redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except RedisUnavailable as exc:
        require_service(False, str(exc))


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys (and only they) are deleted afterwards."""
    name = new_prefix()
    yield name
    delete_prefixed(redis_url, name)


@pytest.fixture
def settings(prefix: str) -> EventBusSettings:
    """Event-bus settings with this test's prefix and short timings so failures surface fast."""
    return EventBusSettings(
        prefix=prefix,
        block_ms=100,
        retry_backoff_ms=10,
        retry_backoff_max_ms=100,
        claim_idle_ms=1_000,
        claim_interval_ms=200,
        reconnect_timeout_s=10.0,
        metrics_interval_s=0.2,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[object]:
    """An asyncio Redis client (bytes replies) for this test."""
    c = create_redis_client(redis_url)
    yield c
    await c.aclose()


# Databases --------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's temporary directory (not created yet)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test.db'}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL of the shared PostgreSQL server; skips (or fails on CI) when it is unreachable."""
    url = admin_url()
    require_postgres(url, asyncio.run(unreachable(url)))
    return url


@pytest.fixture
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the shared server, dropped after the test."""
    async with scratch_database("qt_test", pg_admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# Services ---------------------------------------------------------------------------------------


@pytest.fixture
def harness(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str, tmp_path: Path
) -> ServiceHarness:
    """Environment of one service test: its Redis prefix, its own SQLite file and var
    directory, fast polling."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    monkeypatch.setenv("RUN_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("EVENTBUS_PREFIX", prefix)
    monkeypatch.setenv("EVENTBUS_BLOCK_MS", "50")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QT_API_TOKEN", API_TOKEN)
    return ServiceHarness(redis_url, prefix, database_url)


@pytest.fixture
def harness_database(
    harness: ServiceHarness, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> ServiceHarness:
    """The harness on a SQLite file, then on a fresh PostgreSQL database (dropped afterwards)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    harness.database_url = database_url
    return harness


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PrivateCluster]:
    """A running private cluster; the server refuses to run as root, so it runs as `postgres`."""
    require_service((PG_BIN / "initdb").exists(), f"PostgreSQL binaries not found in {PG_BIN}")
    run_as: list[str] = []
    if os.geteuid() == 0:
        require_service(shutil.which("runuser") is not None, "runuser is needed to run as postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="qt-pg-"))
    if run_as:
        shutil.chown(directory, "postgres")
    cluster = PrivateCluster(directory, free_port(), run_as)
    subprocess.run(
        [
            *run_as,
            str(PG_BIN / "initdb"),
            "-D",
            str(directory / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        # It may already be stopped by a test that failed half-way.
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def cluster_database(
    private_cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A database of this test on the private cluster (which the test may stop), as DATABASE_URL."""
    async with scratch_database("qt_down", private_cluster.url) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        yield url
