"""Prometheus metrics of the library, all in prometheus_client's default `REGISTRY`.

With `PROMETHEUS_MULTIPROC_DIR` set (several uvicorn workers), prometheus_client keeps every
`Counter`, `Gauge` and `Histogram` value in files under that directory, and `/metrics` serves
`scrape_registry()`: the files of every worker, merged. See docs/DEPLOYMENT.md for what that
mode loses (exemplars, custom collectors, gauges computed at scrape time).
"""

from __future__ import annotations

import multiprocessing.util
import os
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

# Buckets for request latency in seconds: 1 ms .. 10 s.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

UNMATCHED_ROUTE = "__unmatched__"

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode; None when it is off.

    Read by prometheus_client when it is first imported: set it before the process starts."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


MULTIPROCESS = multiprocess_dir() is not None


def scrape_registry() -> CollectorRegistry:
    """What `/metrics` serves: the default registry, or in multiprocess mode a registry over
    the files of every worker (live and dead; a dead worker's live gauges are dropped)."""
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def mark_process_dead() -> None:
    """In multiprocess mode, take this process's live gauges (`livesum`, ...) out of the
    merged view: called when a worker exits (`shutdown_observability`, and at interpreter
    exit). A worker killed outright leaves them until the directory is cleared."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


if MULTIPROCESS:
    # uvicorn workers end by re-raising the signal that stopped them, which runs no exit
    # handler: `shutdown_observability` (the service's lifespan end) calls it for them.
    multiprocessing.util.Finalize(None, mark_process_dead, exitpriority=10)

SPANS_DROPPED = Counter(
    "otel_spans_dropped_total",
    "Spans the exporter had to drop, by reason (queue_full, export_failed, shutdown).",
    ["reason"],
)
SPANS_EXPORTED = Counter("otel_spans_exported_total", "Spans delivered to the OTLP endpoint.")
EXPORT_QUEUE = Gauge("otel_export_queue_spans", "Spans waiting in the export queue.")
EXPORT_SECONDS = Counter(
    "otel_export_seconds_total", "Time the export thread spent encoding and sending spans."
)

LOGS_DROPPED = Counter(
    "otel_logs_dropped_total",
    "Log records the OTLP log exporter had to drop, by reason.",
    ["reason"],
)
LOGS_EXPORTED = Counter("otel_logs_exported_total", "Log records delivered over OTLP.")
LOGS_QUEUE = Gauge("otel_log_export_queue_records", "Log records waiting for OTLP export.")
METRIC_EXPORTS = Counter(
    "otel_metric_exports_total", "OTLP metric pushes, by result (ok, failed).", ["result"]
)

# Pre-create the label sets so the series exist (at zero) before the first drop.
for _reason in ("queue_full", "export_failed", "shutdown"):
    SPANS_DROPPED.labels(_reason)
    LOGS_DROPPED.labels(_reason)

# The HTTP methods the semantic conventions know (RFC 9110, PATCH, QUERY); any other method is
# `_OTHER` on spans and metrics. `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS` replaces the list.
DEFAULT_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
KNOWN_METHODS = DEFAULT_KNOWN_METHODS


def set_known_methods(methods: frozenset[str]) -> None:
    global KNOWN_METHODS
    KNOWN_METHODS = methods


class _Series:
    __slots__ = ("buckets", "count", "exemplars", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        # Per bucket, the latest sampled request in it: (trace id, span id, seconds, time).
        self.exemplars: list[tuple[int, int, float, float] | None] = [None] * len(self.buckets)


# (http.request.method, http.route, http.response.status_code, url.scheme, error.type)
SeriesKey = tuple[str, str, int, str, str]


class HttpMetrics:
    """`http.server.request.duration` and `http.server.active_requests` of one app's middleware.

    Exposed as `http_server_request_duration_seconds` (labels `http_request_method`,
    `http_route`, `http_response_status_code`, `url_scheme`, `error_type`) and
    `http_server_active_requests`: the OpenTelemetry semantic-convention names in
    Prometheus form. Cardinality stays bounded: routes are templates (no label for a request
    that matched none), unknown methods are `_OTHER`.

    Why not prometheus_client's Counter and Histogram objects: their per-call label lookup,
    locks and bucket loop cost ~4 µs per request, a tenth of the whole observability budget on
    a trivial endpoint. Here a request is a dict look-up, a bisect and three integer adds,
    done on the event loop thread only; `HttpCollector` turns the totals into the standard
    families at scrape time. A scrape from another thread may see a request in `_count` a
    moment before it is in its bucket, never a lost or double-counted request.
    """

    __slots__ = ("__weakref__", "in_flight", "series")

    def __init__(self) -> None:
        self.series: dict[SeriesKey, _Series] = {}
        # Requests being served now by this app: a plain attribute, read at scrape time (in
        # multiprocess mode the middleware also moves the shared gauge, `active_requests`).
        self.in_flight = 0
        _COLLECTOR.sources.add(self)

    def observe(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        scheme: str = "http",
        error_type: str = "",
        trace_id: int = 0,
        span_id: int = 0,
    ) -> None:
        """Count one request; `trace_id` (of a sampled span) becomes the bucket's exemplar."""
        key = (method, route, status, scheme, error_type)
        series = self.series.get(key)
        if series is None:
            if method not in KNOWN_METHODS:
                # Arbitrary methods must not create series.
                key = ("_OTHER", route, status, scheme, error_type)
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = _Series()
        series.count += 1
        series.sum += seconds
        index = bisect_left(LATENCY_BUCKETS, seconds)
        series.buckets[index] += 1
        if trace_id:
            series.exemplars[index] = (trace_id, span_id, seconds, time.time())
        if MULTIPROCESS:
            method, route, status, scheme, error_type = key
            route = "" if route == UNMATCHED_ROUTE else route
            _multiprocess_http().duration.labels(
                method, route, str(status), scheme, error_type
            ).observe(seconds)


class HttpCollector(Collector):
    """Exposes every `HttpMetrics` of the process (see `HttpMetrics` for the names)."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[HttpMetrics] = weakref.WeakSet()

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        merged: dict[SeriesKey, _Series] = {}
        for source in list(self.sources):
            for key, series in list(source.series.items()):
                total = merged.setdefault(key, _Series())
                total.count += series.count
                total.sum += series.sum
                total.buckets = [a + b for a, b in zip(total.buckets, series.buckets, strict=True)]
                total.exemplars = [
                    _latest(a, b) for a, b in zip(total.exemplars, series.exemplars, strict=True)
                ]
        return self._families(merged)

    def _families(self, merged: dict[SeriesKey, _Series]) -> list[Metric]:
        duration = HistogramMetricFamily(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests (OpenTelemetry http.server.request.duration).",
            labels=[
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "url_scheme",
                "error_type",
            ],
        )
        for (method, route, status, scheme, error_type), series in sorted(merged.items()):
            values = [method, "" if route == UNMATCHED_ROUTE else route, str(status), scheme]
            values.append(error_type)
            cumulative = 0
            buckets: list[Any] = []
            for bound, n, exemplar in zip(
                (*LATENCY_BUCKETS, float("inf")), series.buckets, series.exemplars, strict=True
            ):
                cumulative += n
                bucket: tuple[Any, ...] = (floatToGoString(bound), cumulative)  # type: ignore[no-untyped-call]
                if exemplar is not None:
                    trace_id, span_id, seconds, at = exemplar
                    labels = {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}
                    bucket = (*bucket, Exemplar(labels, seconds, at))
                buckets.append(bucket)
            duration.add_metric(values, buckets, series.sum)
        active = GaugeMetricFamily(
            "http_server_active_requests",
            "HTTP server requests being served now (OpenTelemetry http.server.active_requests).",
        )
        active.add_metric([], sum(s.in_flight for s in self.sources))
        return [duration, active]


def _latest(
    a: tuple[int, int, float, float] | None, b: tuple[int, int, float, float] | None
) -> tuple[int, int, float, float] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a[3] >= b[3] else b


_COLLECTOR = HttpCollector()
REGISTRY.register(_COLLECTOR)


class _MultiprocessHttp:
    """The HTTP metrics as prometheus_client objects, whose values multiprocess mode keeps in
    files that every worker's scrape merges (the custom collector above is per process).
    Registered nowhere: in multiprocess mode `/metrics` reads the files, not a registry."""

    def __init__(self) -> None:
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests (OpenTelemetry http.server.request.duration).",
            [
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "url_scheme",
                "error_type",
            ],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.active = Gauge(
            "http_server_active_requests",
            "HTTP server requests being served now (OpenTelemetry http.server.active_requests).",
            registry=None,
            multiprocess_mode="livesum",
        )


_MULTIPROCESS_HTTP: _MultiprocessHttp | None = None


def active_requests(change: int) -> None:
    """Move the shared `http_server_active_requests` gauge (multiprocess mode)."""
    _multiprocess_http().active.inc(change)


def _multiprocess_http() -> _MultiprocessHttp:
    global _MULTIPROCESS_HTTP
    if _MULTIPROCESS_HTTP is None:
        _MULTIPROCESS_HTTP = _MultiprocessHttp()
    return _MULTIPROCESS_HTTP
