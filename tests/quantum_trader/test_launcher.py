"""The launcher in-process: what each child is given, and how fills are read from the ledger."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from backend.infra.service import BUILT_SERVICES
from quantum_trader.launcher import Launcher, LaunchError, LaunchOptions, describe_fill
from tests.acceptance.harness import StubServer

FILL_LINE = re.compile(r"^\s+fill\s+(BUY|SELL) .* order (\S+)$")


def launcher_in(var_dir: Path, environ: dict[str, str] | None = None, **options: Any) -> Launcher:
    launcher = Launcher(LaunchOptions(var_dir=var_dir, **options), environ=environ or {})
    launcher.load_secrets()
    launcher.redis_url = "redis://127.0.0.1:6399/0"
    return launcher


def test_every_service_gets_its_port_the_others_urls_the_secrets_and_its_own_sqlite_file(
    tmp_path: Path,
) -> None:
    launcher = launcher_in(tmp_path / "state", port_offset=1000)
    assert launcher.secrets is not None
    for spec in BUILT_SERVICES:
        env = launcher.child_env(launcher.child(spec.name))
        assert env["PORT"] == str(spec.port + 1000)
        assert env["DATABASE_URL"] == (
            f"sqlite+aiosqlite:///{(tmp_path / 'state').resolve()}/{spec.name}.db"
        )
        assert env["QT_API_TOKEN"] == launcher.secrets.api_token
        assert env["RISK_APPROVAL_SECRET"] == launcher.secrets.approval_secret
        assert env["REDIS_URL"] == "redis://127.0.0.1:6399/0"
        for other in BUILT_SERVICES:
            assert env[other.url_variable] == f"http://127.0.0.1:{other.port + 1000}"


def test_an_explicit_database_url_is_given_to_every_service_unchanged(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://trader@db:5432/trader"
    launcher = launcher_in(tmp_path, environ={"DATABASE_URL": url})
    assert {launcher.child_env(c)["DATABASE_URL"] for c in launcher.children} == {url}


def test_the_trace_viewer_is_not_given_the_secrets(tmp_path: Path) -> None:
    launcher = launcher_in(tmp_path)
    assert launcher.traceview is not None
    env = launcher.child_env(launcher.traceview)
    assert "QT_API_TOKEN" not in env and "RISK_APPROVAL_SECRET" not in env


def test_services_export_spans_and_logs_to_the_embedded_collector_on_disk(
    tmp_path: Path,
) -> None:
    launcher = launcher_in(tmp_path / "state", port_offset=100)
    assert launcher.traceview is not None
    args = launcher.traceview.args
    assert args[args.index("--port") + 1] == "16786"
    assert args[args.index("--grpc-port") + 1] == "4417"
    assert args[args.index("--otlp-http-port") + 1] == "4418"
    assert args[args.index("--var-dir") + 1] == str((tmp_path / "state").resolve())
    env = launcher.child_env(launcher.child("execution"))
    assert env["OTLP_ENDPOINT"] == "http://127.0.0.1:4418"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_LOGS_EXPORTER"] == "otlp"


def test_a_port_offset_that_leaves_the_port_range_is_refused_naming_the_services(
    tmp_path: Path,
) -> None:
    with pytest.raises(LaunchError, match="outside 1-65535") as caught:
        Launcher(LaunchOptions(var_dir=tmp_path, port_offset=57_530, traceview=False), {})
    assert "eventbus-bridge" in str(caught.value)
    assert "ai-engine" not in str(caught.value)


class Ledger:
    """A stand-in for portfolio-intelligence's `GET /fills`, recording what was asked."""

    def __init__(self) -> None:
        self.page: dict[str, Any] = {"data": [], "count": 0}
        self.requests: list[tuple[str, str | None]] = []
        self.app = FastAPI()

        @self.app.get("/fills")
        async def fills(request: Request) -> dict[str, Any]:
            self.requests.append(
                (
                    str(request.url.path) + "?" + request.url.query,
                    request.headers.get("authorization"),
                )
            )
            return self.page


def fill(fill_id: str, at: datetime, side: str = "BUY") -> dict[str, Any]:
    return {
        "fill_id": fill_id,
        "client_order_id": f"qt-{fill_id}",
        "symbol": "BTCUSDT",
        "side": side,
        "quantity": "0.025",
        "price": "39990.85",
        "fee": "0.99977125",
        "filled_at": at.isoformat(),
        "booked_at": at.isoformat(),
        "sequence": None,
        "liquidity": "TAKER",
    }


@pytest.fixture
def ledger_and_launcher(tmp_path: Path) -> Any:
    ledger = Ledger()
    with StubServer(ledger.app) as server:
        launcher = launcher_in(tmp_path, traceview=False)
        launcher.child("portfolio-intelligence").port = server.port
        try:
            yield ledger, launcher
        finally:
            launcher.http.close()


def test_new_fills_come_from_the_ledger_once_each_oldest_first_none_from_before_the_run(
    ledger_and_launcher: tuple[Ledger, Launcher],
) -> None:
    ledger, launcher = ledger_and_launcher
    start = launcher.started_at
    ledger.page["data"] = [
        fill("b", start + timedelta(seconds=2), side="SELL"),
        fill("a", start + timedelta(seconds=1)),
        fill("earlier", start - timedelta(hours=1)),
    ]
    assert [f.fill_id for f in launcher.new_fills()] == ["a", "b"]
    assert launcher.new_fills() == []
    ledger.page["data"].insert(0, fill("c", start + timedelta(seconds=3)))
    (third,) = launcher.new_fills()
    assert third.fill_id == "c"
    assert FILL_LINE.search(describe_fill(third)).group(2) == "qt-c"  # type: ignore[union-attr]
    assert str(third.quantity) == "0.025", "amounts print as the ledger wrote them"
    assert launcher.secrets is not None
    assert ledger.requests == [("/fills?limit=200", f"Bearer {launcher.secrets.api_token}")] * 3


def test_a_ledger_answer_of_another_shape_is_reported_once_and_yields_no_fill(
    ledger_and_launcher: tuple[Ledger, Launcher], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, launcher = ledger_and_launcher
    ledger.page = {"data": [{"fill_id": "x", "filled_at": datetime.now(UTC).isoformat()}]}
    assert launcher.new_fills() == []
    assert launcher.new_fills() == []
    reported = [line for line in capsys.readouterr().out.splitlines() if "cannot read" in line]
    assert len(reported) == 1
    assert "/fills" in reported[0]


def test_the_guide_names_the_redis_server_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = launcher_in(tmp_path)
    launcher.redis_url = "redis://:s3cret-redis-pass@127.0.0.1:6399/0"
    launcher.print_guide()
    printed = capsys.readouterr().out
    assert "s3cret-redis-pass" not in printed
    assert "redis://:***@127.0.0.1:6399/0" in printed
