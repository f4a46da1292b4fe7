"""A service on an empty database while the bus holds its events refuses to start, saying so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from backend.infra.db import default_url
from backend.infra.eventbus import EventBusSettings, EventPublisher, create_redis_client
from backend.trading.events import OrderFilled
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_default_sqlite_paths_are_absolute_under_the_var_directory_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUN_VAR_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_url("execution") == f"sqlite+aiosqlite:///{ROOT / 'var' / 'execution.db'}"
    monkeypatch.setenv("RUN_VAR_DIR", "state")  # relative: taken against the cwd, once
    assert default_url("execution") == (
        f"sqlite+aiosqlite:///{tmp_path / 'state' / 'execution.db'}"
    )


def publish_history(redis_url: str, prefix: str) -> None:
    async def send() -> None:
        client = create_redis_client(redis_url)
        try:
            publisher = EventPublisher(client, "execution", EventBusSettings(prefix=prefix))
            await publisher.publish(
                OrderFilled(
                    fill_id="F-1",
                    client_order_id="C-1",
                    symbol="BTCUSDT",
                    side="BUY",
                    quantity=Decimal("1"),
                    price=Decimal("100"),
                    fee=Decimal("0.1"),
                    liquidity="TAKER",
                    ts_ms=1_700_000_000_000,
                )
            )
        finally:
            await client.aclose()

    asyncio.run(send())


def test_execution_on_an_empty_database_with_its_fills_on_the_bus_refuses_to_start(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    publish_history(redis_url, prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTLP", "OTEL"))}
    env.update(
        REDIS_URL=redis_url,
        EVENTBUS_PREFIX=prefix,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'elsewhere' / 'execution.db'}",
        PORT=str(free_port()),
        QT_API_TOKEN="wrong-database-test-token-0123456789",
        PYTHONPATH=str(ROOT),
    )
    result = subprocess.run(
        [sys.executable, "-m", "quantum_trader", "serve", "execution"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "execution refuses to start: its database" in output
    assert "is empty (no row in orders, order_events, fills, outbox_events" in output
    assert "published by execution" in output and "QT_ALLOW_EMPTY_DATABASE=true" in output

    # Told it is deliberate, it starts (and is stopped by the test).
    env["QT_ALLOW_EMPTY_DATABASE"] = "true"
    process = subprocess.Popen(
        [sys.executable, "-m", "quantum_trader", "serve", "execution"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            assert "refuses to start" not in line
            if "service started" in line:
                break
    finally:
        process.terminate()
        process.wait(30)
