"""The `quantum-trader` command: its subcommands parse, help, fail clearly, and really run."""

from __future__ import annotations

import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from backend.infra.db import head_revision
from backend.infra.service import BUILT_SERVICES, SERVICES
from quantum_trader import cli
from quantum_trader.launcher import LaunchOptions
from tests.acceptance.harness import base_env
from tests.support.procs import ROOT, free_port, running

SCRIPT = Path(sys.executable).parent / "quantum-trader"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the tree, as the words that name it."""
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli.main, list(args), env=env, prog_name="quantum-trader")


def answer(*args: str, env: dict[str, str] | None = None) -> str:
    """What a command printed last (the suite's JSON logs may come before it)."""
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def test_the_console_script_quantum_trader_is_installed_and_lists_the_commands() -> None:
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "quantum-trader"]
    assert script.value == "quantum_trader.cli:main"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line]
    assert listed == [
        "run",
        "serve",
        "db",
        "traceview",
        "traces",
        "trace",
        "status",
        "bench",
        "webhooks",
    ]


def test_python_dash_m_quantum_trader_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quantum_trader", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "Usage: quantum-trader" in result.stdout


@pytest.mark.parametrize("words", command_paths(cli.main), ids=" ".join)
def test_every_command_has_help(words: tuple[str, ...]) -> None:
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: quantum-trader {' '.join(words)}".rstrip())


def test_serve_help_names_every_built_service() -> None:
    output = " ".join(invoke("serve", "--help").output.split())
    assert all(spec.name in output for spec in BUILT_SERVICES)


def test_serve_an_unknown_service_is_a_usage_error_listing_the_services() -> None:
    result = invoke("serve", "risk_safety")
    assert result.exit_code == 2
    assert "'risk_safety' is not a service" in result.output
    assert all(spec.name in result.output for spec in BUILT_SERVICES)


def test_serve_a_service_that_is_not_built_yet_says_so() -> None:
    unbuilt = [s.name for s in SERVICES if not s.built]
    if not unbuilt:
        pytest.skip("every service of the catalogue is built")
    result = invoke("serve", unbuilt[0])
    assert result.exit_code == 2
    assert f"'{unbuilt[0]}' is not built yet" in result.output


def test_serve_starts_one_service_that_answers_health_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    env = {
        **base_env(redis_url, None),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/execution.db",
    }
    args = [str(SCRIPT), "serve", "execution", "--port", str(port)]
    with running(args, env, tmp_path / "serve.log", port=port, ready_path="/health/ready") as proc:
        live = httpx.get(f"http://127.0.0.1:{port}/health/live")
        assert live.status_code == 200
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so -15 is a clean exit.
        assert proc.stop() in (0, -signal.SIGTERM), proc.output()[-2000:]
    assert '"message":"service stopped"' in proc.output()
    assert (tmp_path / "execution.db").is_file()


def test_run_reads_its_options_and_their_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[LaunchOptions] = []

    def launch(options: LaunchOptions) -> int:
        started.append(options)
        return 0

    # Only the parsing is under test here; tests/test_run.py runs the real launcher.
    monkeypatch.setattr("quantum_trader.launcher.run", launch)
    result = invoke(
        "run",
        "--port-offset",
        "100",
        "--no-traceview",
        env={"RUN_VAR_DIR": str(tmp_path), "RUN_READY_TIMEOUT_S": "7.5"},
    )
    assert result.exit_code == 0, result.output
    assert started == [
        LaunchOptions(
            var_dir=tmp_path,
            port_offset=100,
            ready_timeout_s=7.5,
            stop_timeout_s=30.0,
            traceview=False,
            redis_port=0,
        )
    ]


def test_run_with_a_bad_variable_names_it() -> None:
    result = invoke("run", env={"RUN_STOP_TIMEOUT_S": "soon"})
    assert result.exit_code == 2
    assert "RUN_STOP_TIMEOUT_S" in result.output


def test_db_upgrades_reports_and_downgrades_a_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    assert answer("db", "current", "--url", url) == "base"
    assert answer("db", "upgrade", "--url", url) == f"at {head_revision()}"
    assert answer("db", "current", env={"DATABASE_URL": url}) == head_revision()
    assert answer("db", "heads") == head_revision()
    assert answer("db", "downgrade", "base", "--url", url) == "at base"
    assert answer("db", "current", "--url", url) == "base"


def test_db_without_a_url_uses_the_services_sqlite_file_under_the_var_directory(
    tmp_path: Path,
) -> None:
    result = invoke("db", "upgrade", "--service", "execution", "--var-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "execution.db").is_file()


def test_db_for_an_unknown_service_is_a_usage_error() -> None:
    result = invoke("db", "current", "--service", "executon")
    assert result.exit_code == 2
    assert "'executon' is not a service" in result.output


def test_db_that_cannot_reach_its_database_fails_with_one_line_not_a_traceback() -> None:
    result = invoke("db", "current", "--url", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1, "one line"
    assert "Traceback" not in result.output


def test_traceview_serves_the_viewer_on_the_port_given(tmp_path: Path) -> None:
    port = free_port()
    args = [str(SCRIPT), "traceview", "--port", str(port), "--grpc-port", "0"]
    args += ["--otlp-http-port", "0", "--var-dir", str(tmp_path)]
    with running(args, {}, tmp_path / "traceview.log", port=port, ready_path="/api/traces"):
        assert httpx.get(f"http://127.0.0.1:{port}/api/traces").json()["data"] == []
    assert (tmp_path / "traces" / "spans.sqlite").is_file()


def test_bench_with_an_unknown_benchmark_lists_the_benchmarks() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "bench", "bench_nothing"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "bench_http" in result.stderr and "bench_eventbus" in result.stderr


def test_bench_passes_the_options_after_a_name_to_that_benchmark() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "bench", "halt_window", "--", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--runs" in result.stdout  # halt_window's own
    several = subprocess.run(
        [sys.executable, str(SCRIPT), "bench", "halt_window", "startup", "--runs", "1"],
        capture_output=True,
        text=True,
    )
    assert several.returncode == 2
    assert "name exactly one" in several.stderr
