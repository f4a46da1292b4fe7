"""Fixtures for the database tests: a private PostgreSQL cluster a test may stop.

SQLite files and throw-away databases on `TEST_DATABASE_URL`'s server (`sqlite_url`, `pg_url`,
`database_url`) come from `tests.support.plugin`. Tests that stop the database use a private
cluster on a free port, never the shared server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PG_BIN, PrivateCluster
from tests.support.procs import free_port
from tests.support.require import require_service


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
