"""`quantum-trader traces`, `trace` and `status` against a real viewer served over HTTP (and,
for `status`, services that are not there; the acceptance browser test runs it against the
real services)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from backend.infra.traceview import create_app
from quantum_trader.cli import main
from tests.support.procs import free_port
from tests.traceview import seed
from tests.traceview.listqueries import ListQueries
from tests.traceview.served import ServedApp


@pytest.fixture(scope="module")
def viewer() -> Iterator[str]:
    spans, logs = seed.seeded(time.time_ns())
    with ServedApp(create_app(ListQueries(spans, logs), ingest_routes=[])) as served:
        yield served.url


@pytest.fixture(autouse=True)
def quiet_httpx() -> Iterator[None]:
    """The commands' output only: an in-process service test earlier in the session may have
    configured JSON logging to standard output, which would print httpx's request lines here."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_traces_lists_recent_traces_with_the_viewers_filters(viewer: str) -> None:
    code, out = run("traces", "--viewer", viewer)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 5 and seed.NOISE not in out  # newest first, noise hidden
    assert lines[0].split()[1] == seed.STALE
    code, out = run("traces", "--viewer", viewer, "--service", "risk-safety", "--min-ms", "20")
    assert code == 0 and seed.SLOW in out and seed.FAST not in out
    code, out = run("traces", "--viewer", viewer, "--attr", "reason=LOW_CONFIDENCE")
    assert out.split()[1] == seed.LOW
    code, out = run("traces", "--viewer", viewer, "--key", "no-such-order")
    assert (code, out.strip()) == (0, "no traces match")


def test_the_viewer_is_found_by_the_run_port_offset_or_traceview_url(viewer: str) -> None:
    offset = int(viewer.rsplit(":", 1)[1]) - 16686
    code, out = run("traces", "--port-offset", str(offset))
    assert code == 0 and seed.FAST in out
    result = CliRunner().invoke(main, ["trace", seed.FAST], env={"TRACEVIEW_URL": viewer})
    assert result.exit_code == 0 and "execution: order.submit" in result.output


def test_traces_refuses_bad_filters_and_names_an_absent_viewer(viewer: str) -> None:
    code, out = run("traces", "--viewer", viewer, "--attr", "novalue")
    assert code == 2 and "expected KEY=VALUE" in out
    code, out = run("traces", "--viewer", viewer, "--lookback", "soon")
    assert code == 1 and "window='soon'" in out
    code, out = run("traces", "--viewer", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "no answer from the trace viewer" in out


def test_trace_draws_a_waterfall_with_the_critical_path(viewer: str) -> None:
    code, out = run("trace", seed.FAST, "--viewer", viewer)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("19 spans, 6 services, 1 trace(s)")
    submit = next(line for line in lines if "execution: order.submit" in line)
    assert submit.startswith("* |") and "15.000 ms" in submit
    # Indentation follows the tree: the SQL statement sits under order.submit.
    insert = next(line for line in lines if "execution: INSERT orders" in line)
    assert insert.index("execution: INSERT") > submit.index("execution: order.submit")


def test_trace_of_an_order_spans_its_linked_traces(viewer: str) -> None:
    code, out = run("trace", seed.FAST_ORDER, "--viewer", viewer)
    assert code == 0
    assert out.splitlines()[0] == (
        "27 spans, 7 services, 2 trace(s), "
        + out.splitlines()[0].split("trace(s), ")[1].split(";")[0]
        + "; states: ACCEPTED → FILLED"
    )
    assert f"trace {seed.FAST}" in out and f"trace {seed.FILL}" in out
    assert "execution: order.fill → 1 link(s)" in out
    code, out = run("trace", "nothing-like-it", "--viewer", viewer)
    assert code == 1 and "no trace and no order 'nothing-like-it'" in out


def test_status_reports_services_that_do_not_answer_and_exits_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AI_ENGINE", "EXECUTION", "RISK_SAFETY", "PORTFOLIO_INTELLIGENCE"):
        monkeypatch.setenv(f"{name}_URL", f"http://127.0.0.1:{free_port()}")
    code, out = run("status")
    assert code == 1
    assert "execution                NOT READY  no answer: ConnectError" in out
    assert "risk: unknown (risk-safety: ConnectError" in out
    assert "portfolio: unknown (portfolio-intelligence: ConnectError" in out
