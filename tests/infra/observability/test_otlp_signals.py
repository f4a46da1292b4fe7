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
