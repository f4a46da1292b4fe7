"""execution under `uvicorn --factory ...:create_app --workers 2` with Prometheus multiprocess
mode: `/metrics`, whichever worker answers it, counts the requests every worker served.

Each worker writes its values to its own files under `PROMETHEUS_MULTIPROC_DIR`; the test
reads those files per worker to see that both served requests, and checks that a scrape adds
them up. A worker that exits marks itself dead: its live gauge files are removed.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import wait_until
from tests.support.procs import free_port, running
from tests.support.riskstub import RiskStub

ROUTE = "/risk/state"
DURATION_COUNT = "http_server_request_duration_seconds_count"


def served(files: list[Path]) -> float:
    """Requests to ROUTE recorded in these multiprocess files."""
    return sum(
        sample.value
        for family in MultiProcessCollector.merge([str(f) for f in files], accumulate=True)
        for sample in family.samples
        if sample.name == DURATION_COUNT and sample.labels.get("http_route") == ROUTE
    )


def per_worker(directory: Path) -> dict[str, float]:
    """Requests to ROUTE per worker process id, from each worker's histogram file."""
    counts = {}
    for path in directory.glob("histogram_*.db"):
        pid = re.fullmatch(r"histogram_(\d+)\.db", path.name)
        if pid:
            counts[pid.group(1)] = served([path])
    return counts


def scraped(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == DURATION_COUNT and sample.labels.get("http_route") == ROUTE
    )


def test_metrics_count_the_requests_of_every_worker(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    risk = RiskStub()
    port = free_port()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "EXECUTION_SHARED_VENUE": "1",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'execution.db'}",
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": prefix,
        "RISK_SAFETY_URL": risk.url,
        "QT_API_TOKEN": "workers-test-token",
        "OTLP_ENDPOINT": "",
        "OTEL_SDK_DISABLED": "true",
    }
    args = [
        "-m",
        "uvicorn",
        "--factory",
        "microservices.execution.main:create_app",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    sent = 0
    try:
        with running(args, env, tmp_path / "uvicorn.log", port, "/health/ready", 90) as proc:

            def burst() -> bool:
                nonlocal sent
                # Fresh connections, several at a time: the kernel hands them to both workers.
                with ThreadPoolExecutor(8) as pool:
                    codes = list(
                        pool.map(
                            lambda _: httpx.get(f"http://127.0.0.1:{port}{ROUTE}").status_code,
                            range(40),
                        )
                    )
                assert codes == [200] * len(codes)
                sent += len(codes)
                counts = per_worker(multiproc)
                return len(counts) == 2 and min(counts.values()) > 0

            wait_until(burst, 60, "requests served by both workers", 0)
            # A worker records a request just after answering it.
            wait_until(
                lambda: sum(per_worker(multiproc).values()) == sent, 30, "every request recorded"
            )
            assert scraped(port) == sent  # each scrape, from either worker, adds both up
            assert scraped(port) == sent
            live = {p.name for p in multiproc.glob("gauge_livesum_*.db")}
            assert len(live) == 2, live  # the active-requests gauge of each worker
            assert "Traceback" not in proc.output(), proc.output()[-3000:]
        # Both workers exited and marked themselves dead: no live gauge is left behind.
        assert list(multiproc.glob("gauge_livesum_*.db")) == []
    finally:
        risk.close()
