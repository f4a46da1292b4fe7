"""Fixtures for the database tests: SQLite files, throw-away PostgreSQL databases and a cluster.

PostgreSQL tests use `TEST_DATABASE_URL` (default: the machine's server on 127.0.0.1:5432):
each test gets its own database, created here and dropped afterwards. Tests that stop the
database use a private cluster on a free port, never the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import require_service
from tests.support.postgres import DEFAULT_PG_URL, asyncpg_dsn, scratch_database

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


async def _pg_reachable(url: str) -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL of the shared PostgreSQL server; skips (or fails on CI) when it is unreachable."""
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)
    error = asyncio.run(_pg_reachable(url))
    require_service(error is None, f"PostgreSQL at {make_url(url).host} unreachable: {error}")
    return url


@pytest.fixture
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the shared server, dropped after the test."""
    async with scratch_database("qt_dbtest", pg_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's temporary directory (not created yet)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of this test run only, logging every statement it receives."""

    directory: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c log_statement=all -c fsync=off -c shared_buffers=16MB"
        )
        self._pg_ctl("start", "-w", "-l", str(self.log_file), "-o", options)

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-m", "fast")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")


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
    cluster = PrivateCluster(directory, _free_port(), run_as)
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


async def wait_until(predicate: object, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    """Poll an async predicate until it returns true, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
