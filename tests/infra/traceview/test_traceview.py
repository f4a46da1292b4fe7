"""The embedded viewer accepts real OTLP/HTTP exports and shows one trace across services."""

from __future__ import annotations

from pathlib import Path

import httpx

from backend.infra.traceview import SqliteSpanStore, TraceStore, create_app
from tests.support.procs import free_port, running


def test_spans_exported_by_a_service_are_listed_found_and_drawn(tmp_path: Path) -> None:
    viewer_port, service_port = free_port(), free_port()
    args = ["-m", "backend.infra.traceview", "--port", str(viewer_port), "--grpc-port", "0"]
    args += ["--otlp-http-port", "0", "--store", str(tmp_path / "spans.sqlite")]
    # A plain request, not an order: keep it, whatever the sampling of plain traces.
    args += ["--tick-sample-rate", "1"]
    with running(
        args,
        {},
        tmp_path / "viewer.log",
        viewer_port,
        ready_path="/api/traces",
    ):
        env = {
            "OTLP_ENDPOINT": f"http://127.0.0.1:{viewer_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        with running(
            ["-m", "tests.support.echo_service", str(service_port)],
            env,
            tmp_path / "svc.log",
            service_port,
        ):
            httpx.get(f"http://127.0.0.1:{service_port}/hop/0").raise_for_status()
            base = f"http://127.0.0.1:{viewer_port}"

            def found() -> list[dict[str, object]]:
                return httpx.get(f"{base}/api/traces", params={"key": "BTCUSDT"}).json()["data"]

            from tests.support.procs import wait_until

            (trace,) = wait_until(found, what="the trace to reach the viewer")
        assert trace["services"] == [f"echo-{service_port}"]
        assert trace["spans"] == 2
        spans = httpx.get(f"{base}/api/traces/{trace['trace_id']}").json()["data"]
        assert {s["name"] for s in spans} == {"GET /hop/{n}", "process_signal"}
        page = httpx.get(f"{base}/trace/{trace['trace_id']}").text
        assert "GET /hop/{n}" in page and "process_signal" in page
        assert httpx.get(f"{base}/?key=BTCUSDT").text.count(f"/trace/{trace['trace_id']}") == 1


def test_a_malformed_export_is_refused_with_a_reason(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    with SqliteSpanStore(tmp_path / "spans.sqlite") as store:
        client = TestClient(create_app(store))
        response = client.post(
            "/v1/traces",
            content=b"\xff\xff not protobuf",
            headers={"Content-Type": "application/x-protobuf"},
        )
    assert response.status_code == 400
    assert "not an OTLP ExportTraceServiceRequest" in response.json()["message"]


def test_memory_is_bounded_by_forgetting_the_oldest_traces() -> None:
    from backend.infra.traceview._store import StoredSpan

    store = TraceStore(max_traces=3)
    for n in range(5):
        store.add([StoredSpan(f"{n:032x}", "01", "", "op", "server", "svc", 0, 1, {}, False)])
    assert [t["trace_id"] for t in store.search()] == [f"{n:032x}" for n in (4, 3, 2)]
