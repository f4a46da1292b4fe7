"""Metrics and logs over OTLP beside Prometheus and stdout, for a collector-only deployment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backend.infra.observability import ObservabilityConfigError
from backend.infra.observability._config import load_config

from .test_exporter_spec import FakeCollector

ROOT = Path(__file__).resolve().parents[3]


def test_metrics_and_logs_go_to_a_collector_for_all_signals_unless_switched_off() -> None:
    http = load_config("s", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert http.otlp_metrics_endpoint == "http://c:4318/v1/metrics"
    assert http.otlp_logs_endpoint == "http://c:4318/v1/logs"
    grpc = load_config("s", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert grpc.otlp_metrics_endpoint == grpc.otlp_logs_endpoint == "http://c:4317"
    # The seed's OTLP_ENDPOINT (Jaeger in the seed: traces only) sends traces alone, unless
    # the exporters are asked for by name.
    seed = load_config("s", env={"OTLP_ENDPOINT": "http://jaeger:4318"})
    assert seed.otlp_metrics_endpoint is None and seed.otlp_logs_endpoint is None
    asked = load_config(
        "s",
        env={
            "OTLP_ENDPOINT": "http://c:4318",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
        },
    )
    assert asked.otlp_metrics_endpoint == "http://c:4318/v1/metrics"
    assert asked.otlp_logs_endpoint == "http://c:4318/v1/logs"
    off = load_config(
        "s",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    assert off.otlp_metrics_endpoint is None and off.otlp_logs_endpoint is None
    specific = load_config("s", env={"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318/custom"})
    assert specific.otlp_logs_endpoint == "http://logs:4318/custom"
    assert load_config("s", env={}).otlp_metrics_endpoint is None
    with pytest.raises(ObservabilityConfigError) as info:
        load_config("s", env={"OTEL_LOGS_EXPORTER": "console"})
    assert info.value.variable == "OTEL_LOGS_EXPORTER"


def test_a_service_sends_its_metrics_and_logs_to_the_collector() -> None:
    script = textwrap.dedent(
        """
        from backend.infra.observability import (
            get_logger, get_tracer, init_observability, shutdown_observability,
        )
        from backend.infra.observability._metrics import HttpMetrics
        init_observability("signals", "INFO")
        http = HttpMetrics()  # kept: the collector holds its sources weakly
        http.observe("GET", "/orders/{id}", 200, 0.004)
        with get_tracer("t").start_as_current_span("work"):
            get_logger("app").warning("filled", order_id="o-1", api_key="k-secret")
        shutdown_observability(3000)
        """
    )
    with FakeCollector([]) as collector:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "100000",
        }
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        bodies = dict(zip(collector.paths, (r[2] for r in collector.requests), strict=True))
    assert {"/v1/metrics", "/v1/logs"} <= set(bodies)
    metrics = ExportMetricsServiceRequest.FromString(bodies["/v1/metrics"])
    resource = {
        kv.key: kv.value.string_value for kv in metrics.resource_metrics[0].resource.attributes
    }
    assert resource["service.name"] == "signals"
    by_name = {m.name: m for m in metrics.resource_metrics[0].scope_metrics[0].metrics}
    duration = by_name["http.server.request.duration"]
    assert duration.unit == "s"
    (point,) = [
        p
        for p in duration.histogram.data_points
        if any(
            kv.key == "http.route" and kv.value.string_value == "/orders/{id}"
            for kv in p.attributes
        )
    ]
    assert point.count == 1 and sum(point.bucket_counts) == 1
    assert by_name["otel_spans_dropped"].sum.is_monotonic
    logs = ExportLogsServiceRequest.FromString(bodies["/v1/logs"])
    records = [r for sl in logs.resource_logs[0].scope_logs for r in sl.log_records]
    (filled,) = [r for r in records if r.body.string_value == "filled"]
    assert filled.severity_number == 13 and filled.severity_text == "WARNING"
    assert len(filled.trace_id) == 16 and len(filled.span_id) == 8
    attributes = {kv.key: kv.value.string_value for kv in filled.attributes}
    assert attributes["order_id"] == "o-1"
    assert attributes["api_key"] == "REDACTED"


def test_access_lines_go_to_the_collector_too_one_per_request() -> None:
    script = textwrap.dedent(
        """
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from backend.infra.observability import (
            init_observability, instrument_fastapi, shutdown_observability,
        )
        init_observability("access-otlp", "INFO")
        app = FastAPI()
        @app.get("/orders/{order_id}")
        def order(order_id: str) -> dict[str, str]:
            return {"id": order_id}
        instrument_fastapi(app)
        with TestClient(app) as client:
            for n in range(3):
                assert client.get(f"/orders/o-{n}").status_code == 200
        shutdown_observability(3000)
        """
    )
    with FakeCollector([]) as collector:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRICS_EXPORTER": "none",
        }
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        log_bodies = [
            r[2]
            for path, r in zip(collector.paths, collector.requests, strict=True)
            if path == "/v1/logs"
        ]
        traces = [
            r[2]
            for path, r in zip(collector.paths, collector.requests, strict=True)
            if path == "/v1/traces"
        ]
    records = [
        r
        for body in log_bodies
        for rl in ExportLogsServiceRequest.FromString(body).resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
    access = [
        r
        for r in records
        if {kv.key: kv.value for kv in r.attributes}["logger"].string_value == "access"
    ]
    assert sorted(r.body.string_value for r in access) == [
        f"GET /orders/o-{n} 200" for n in range(3)
    ]
    stdout_access = [
        line for line in done.stdout.decode().splitlines() if '"logger":"access"' in line
    ]
    assert len(stdout_access) == 3
    span_ids = {
        s.span_id
        for body in traces
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    for record in access:
        attributes = {kv.key: kv.value for kv in record.attributes}
        assert record.severity_text == "INFO" and record.severity_number == 9
        assert attributes["http.route"].string_value == "/orders/{order_id}"
        assert attributes["http.response.status_code"].int_value == 200
        assert attributes["duration_ms"].double_value >= 0
        assert len(record.trace_id) == 16 and record.span_id in span_ids
        assert record.flags & 1 == 1  # sampled
