"""OTLP export of metrics and logs, beside Prometheus and stdout, for a collector-only setup.

Metrics: every `OTEL_METRIC_EXPORT_INTERVAL` (60 s) the Prometheus default registry is read
and sent as an `ExportMetricsServiceRequest` (counters as monotonic cumulative sums, gauges,
histograms with their explicit bounds, summaries). The HTTP server metrics go under their
OpenTelemetry names (`http.server.request.duration`, attributes with dots); the others keep
their Prometheus names. Logs: each stdlib log record, as already formatted (and scrubbed) for
the JSON line, is queued and sent in batches as an `ExportLogsServiceRequest`, with its
severity, trace context and fields as attributes. Both use the span exporter's transports
(retries, gzip, headers, TLS) and bounded queues that drop and count instead of blocking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY

from ._export import (
    _attributes,
    _len_field,
    _pack_i,
    _pack_q,
    _str_field,
    _varint,
    encode_resource,
    encode_scope,
)
from ._metrics import LOGS_DROPPED, LOGS_EXPORTED, LOGS_QUEUE, METRIC_EXPORTS

_log = logging.getLogger("backend.infra.observability.export")

# Prometheus families exported under their OpenTelemetry names: (name, unit, label -> key).
_OTEL_NAMES: dict[str, tuple[str, str, dict[str, str]]] = {
    "http_server_request_duration_seconds": (
        "http.server.request.duration",
        "s",
        {
            "http_request_method": "http.request.method",
            "http_route": "http.route",
            "http_response_status_code": "http.response.status_code",
            "url_scheme": "url.scheme",
            "error_type": "error.type",
        },
    ),
    "http_server_active_requests": ("http.server.active_requests", "{request}", {}),
}

_SEVERITY = {
    logging.DEBUG: 5,
    logging.INFO: 9,
    logging.WARNING: 13,
    logging.ERROR: 17,
    logging.CRITICAL: 21,
}
# Fields of a JSON line that are the record itself, not attributes.
_LINE_FIELDS = frozenset(
    {
        "time",
        "level",
        "message",
        "trace_id",
        "span_id",
        "trace_flags",
        "service.name",
        "service.version",
        "deployment.environment.name",
        "exception",
    }
)


def _any_value(pb: Any, value: Any) -> Any:
    target = pb.AnyValue()
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = value if isinstance(value, str) else str(value)
    return target


def _key_values(pb: Any, attributes: Mapping[str, Any]) -> list[Any]:
    return [
        pb.KeyValue(key=key, value=_any_value(pb, value))
        for key, value in attributes.items()
        if value is not None and value != ""
    ]


def _resource(resource_pb: Any, common_pb: Any, attributes: Mapping[str, Any]) -> Any:
    return resource_pb.Resource(attributes=_key_values(common_pb, attributes))


# --- Metrics ----------------------------------------------------------------------------------


def encode_metrics(
    resource_attributes: Mapping[str, Any], scope: tuple[str, str], start_ns: int
) -> bytes:
    """The default registry as an OTLP `ExportMetricsServiceRequest`."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as service
    from opentelemetry.proto.common.v1 import common_pb2 as common
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
    from opentelemetry.proto.resource.v1 import resource_pb2

    now = time.time_ns()
    metrics = []
    for family in REGISTRY.collect():
        name, unit, label_keys = _OTEL_NAMES.get(family.name, (family.name, family.unit, {}))

        def attrs(labels: Mapping[str, str], keys: dict[str, str] = label_keys) -> list[Any]:
            return _key_values(common, {keys.get(k, k): v for k, v in labels.items()})

        metric = pb.Metric(name=name, description=family.documentation, unit=unit)
        samples = family.samples
        if family.type == "counter":
            points = [
                pb.NumberDataPoint(
                    attributes=attrs(s.labels),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now,
                    as_double=float(s.value),
                )
                for s in samples
                if s.name.endswith("_total") or s.name == family.name
            ]
            metric.sum.CopyFrom(
                pb.Sum(
                    data_points=points,
                    aggregation_temporality=pb.AGGREGATION_TEMPORALITY_CUMULATIVE,
                    is_monotonic=True,
                )
            )
        elif family.type == "histogram":
            metric.histogram.CopyFrom(
                pb.Histogram(
                    data_points=_histogram_points(pb, samples, attrs, start_ns, now),
                    aggregation_temporality=pb.AGGREGATION_TEMPORALITY_CUMULATIVE,
                )
            )
        elif family.type == "summary":
            metric.summary.CopyFrom(
                pb.Summary(data_points=_summary_points(pb, samples, attrs, start_ns, now))
            )
        else:  # gauge, info, stateset, unknown: the value as it is now
            points = [
                pb.NumberDataPoint(
                    attributes=attrs(s.labels), time_unix_nano=now, as_double=float(s.value)
                )
                for s in samples
                if not s.name.endswith("_created")
            ]
            metric.gauge.CopyFrom(pb.Gauge(data_points=points))
        metrics.append(metric)
    request = service.ExportMetricsServiceRequest(
        resource_metrics=[
            pb.ResourceMetrics(
                resource=_resource(resource_pb2, common, resource_attributes),
                scope_metrics=[
                    pb.ScopeMetrics(
                        scope=common.InstrumentationScope(name=scope[0], version=scope[1]),
                        metrics=metrics,
                    )
                ],
            )
        ]
    )
    return bytes(request.SerializeToString())


def _series_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k not in ("le", "quantile")))


def _histogram_points(pb: Any, samples: Sequence[Any], attrs: Any, start: int, now: int) -> list:  # type: ignore[type-arg]
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        entry = series.setdefault(_series_key(s.labels), {"buckets": [], "count": 0, "sum": 0.0})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            entry["count"] = int(s.value)
        elif s.name.endswith("_sum"):
            entry["sum"] = float(s.value)
    points = []
    for key, entry in series.items():
        buckets = sorted(entry["buckets"])
        bounds = [b for b, _ in buckets if b != float("inf")]
        counts, previous = [], 0.0
        for _, cumulative in buckets:
            counts.append(int(cumulative - previous))
            previous = cumulative
        points.append(
            pb.HistogramDataPoint(
                attributes=attrs(dict(key)),
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=entry["count"],
                sum=entry["sum"],
                bucket_counts=counts,
                explicit_bounds=bounds,
            )
        )
    return points


def _summary_points(pb: Any, samples: Sequence[Any], attrs: Any, start: int, now: int) -> list:  # type: ignore[type-arg]
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        entry = series.setdefault(_series_key(s.labels), {"q": [], "count": 0, "sum": 0.0})
        if "quantile" in s.labels:
            entry["q"].append((float(s.labels["quantile"]), float(s.value)))
        elif s.name.endswith("_count"):
            entry["count"] = int(s.value)
        elif s.name.endswith("_sum"):
            entry["sum"] = float(s.value)
    return [
        pb.SummaryDataPoint(
            attributes=attrs(dict(key)),
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=entry["count"],
            sum=entry["sum"],
            quantile_values=[
                pb.SummaryDataPoint.ValueAtQuantile(quantile=q, value=v) for q, v in entry["q"]
            ],
        )
        for key, entry in series.items()
    ]


class MetricsPusher:
    """Sends the registry every `interval_s` on a named daemon thread; a final push at stop."""

    def __init__(
        self,
        transport: Any,
        resource_attributes: Mapping[str, Any],
        scope: tuple[str, str],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._transport = transport
        self._resource = dict(resource_attributes)
        self._scope = scope
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._start_ns = time.time_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metric-export", daemon=True)
        self._thread.start()

    def push(self) -> bool:
        try:
            payload = encode_metrics(self._resource, self._scope, self._start_ns)
            self._transport.send(payload, self._timeout_s)
        # Broad on purpose: a failed push is counted and logged, never raised into the service.
        except Exception as exc:
            METRIC_EXPORTS.labels("failed").inc()
            _log.warning("metric export failed (%s)", exc)
            return False
        METRIC_EXPORTS.labels("ok").inc()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.push()

    def shutdown(self, timeout_s: float = 2.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._timeout_s = min(self._timeout_s, timeout_s)
        self.push()
        self._transport.close()


# --- Logs -------------------------------------------------------------------------------------


def encode_logs(
    records: Sequence[tuple[int, int, str, dict[str, Any]]],
    resource_attributes: Mapping[str, Any],
    scope: tuple[str, str],
) -> bytes:
    """Queued (time ns, level number, level name, JSON-line fields) as an OTLP logs request.

    Written on the wire directly, with the span encoder's pieces (`_export`): through the
    protobuf classes a record cost about 20 µs of the export thread, which holds the
    interpreter lock the service's requests wait for, and every order logs a few lines.
    `tests/infra/observability/test_otlp_logs.py` pins the bytes to the protobuf classes'
    reading of them.
    """
    out = []
    for time_ns, levelno, levelname, fields in records:
        attributes = {
            k: v for k, v in fields.items() if k not in _LINE_FIELDS and v is not None and v != ""
        }
        exception = fields.get("exception")
        if isinstance(exception, dict):
            for key in ("type", "message", "stacktrace"):
                value = exception.get(key)
                if value is not None and value != "":
                    attributes[f"exception.{key}"] = value
        stamp = _pack_q(time_ns)
        parts = [
            b"\x09",  # time_unix_nano (1, fixed64)
            stamp,
            b"\x10",  # severity_number (2)
            _varint(_SEVERITY.get(levelno, 9)),
            _str_field(0x1A, levelname),  # severity_text (3)
            _len_field(0x2A, _str_field(0x0A, str(fields.get("message", "")))),  # body (5)
            _attributes(0x32, attributes),  # attributes (6)
        ]
        trace_id = fields.get("trace_id")
        if trace_id:
            parts.append(b"\x45" + _pack_i(int(fields.get("trace_flags") or "0", 16)))  # flags
            parts.append(_len_field(0x4A, bytes.fromhex(trace_id)))  # trace_id (9)
            parts.append(_len_field(0x52, bytes.fromhex(fields["span_id"])))  # span_id (10)
        parts.append(b"\x59" + stamp)  # observed_time_unix_nano (11, fixed64)
        out.append(_len_field(0x12, b"".join(parts)))  # ScopeLogs.log_records (2)
    resource = {k: v for k, v in resource_attributes.items() if v is not None and v != ""}
    scope_logs = _len_field(0x0A, encode_scope(*scope)) + b"".join(out)
    resource_logs = _len_field(0x0A, encode_resource(resource)) + _len_field(0x12, scope_logs)
    return _len_field(0x0A, resource_logs)  # ExportLogsServiceRequest.resource_logs (1)


def make_log_queue(
    transport: Any,
    resource_attributes: Mapping[str, Any],
    scope: tuple[str, str],
    timeout_s: float,
    max_queue_size: int = 2048,
    max_batch_size: int = 512,
    delay_ms: int = 1000,
) -> Any:
    """An `ExportQueue` of log records: bounded, batched, retried, dropped and counted."""
    from ._export import ExportQueue

    resource = dict(resource_attributes)

    def encode(batch: Sequence[Any]) -> bytes:
        return encode_logs(batch, resource, scope)

    return ExportQueue(
        transport,
        max_queue_size=max_queue_size,
        max_batch_size=max_batch_size,
        delay_ms=delay_ms,
        encoder=encode,
        timeout_s=timeout_s,
        dropped=LOGS_DROPPED,
        exported=LOGS_EXPORTED,
        queue_gauge=LOGS_QUEUE,
        thread_name="otlp-log-export",
    )
