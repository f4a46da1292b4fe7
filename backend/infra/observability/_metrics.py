"""Prometheus metrics of the library, all in prometheus_client's default `REGISTRY`."""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
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

# Pre-create the label sets so the series exist (at zero) before the first drop.
for _reason in ("queue_full", "export_failed", "shutdown"):
    SPANS_DROPPED.labels(_reason)

# The HTTP methods the semantic conventions know (RFC 9110, PATCH, QUERY); any other method is
# `_OTHER` on spans and metrics. `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS` replaces the list.
DEFAULT_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
KNOWN_METHODS = DEFAULT_KNOWN_METHODS


def set_known_methods(methods: frozenset[str]) -> None:
    global KNOWN_METHODS
    KNOWN_METHODS = methods


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Series:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)


class HttpMetrics:
    """Request count, duration histogram and in-flight gauge of one app's middleware.

    Why not prometheus_client's Counter and Histogram objects: their per-call label lookup,
    locks and bucket loop cost ~4 µs per request, a tenth of the whole observability budget on
    a trivial endpoint. Here a request is a dict look-up, a bisect and three integer adds,
    done on the event loop thread only; `HttpCollector` turns the totals into the standard
    families at scrape time. A scrape from another thread may see a request in `_count` a
    moment before it is in its bucket, never a lost or double-counted request.
    """

    __slots__ = ("__weakref__", "in_flight", "series")

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], _Series] = {}
        self.in_flight = 0
        _COLLECTOR.sources.add(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status // 100)
        series = self.series.get(key)
        if series is None:
            if method not in KNOWN_METHODS:
                # Arbitrary methods must not create series.
                key = ("_OTHER", route, status // 100)
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = _Series()
        series.count += 1
        series.sum += seconds
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


class HttpCollector(Collector):
    """Exposes every `HttpMetrics` of the process as `http_requests_total`,
    `http_request_duration_seconds` and `http_requests_in_flight`."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[HttpMetrics] = weakref.WeakSet()

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        merged: dict[tuple[str, str, int], _Series] = {}
        for source in list(self.sources):
            for key, series in list(source.series.items()):
                total = merged.setdefault(key, _Series())
                total.count += series.count
                total.sum += series.sum
                total.buckets = [a + b for a, b in zip(total.buckets, series.buckets, strict=True)]
        return self._families(merged)

    def _families(self, merged: dict[tuple[str, str, int], _Series]) -> list[Metric]:
        labels = ["method", "route", "status"]
        requests = CounterMetricFamily(
            "http_requests",
            "HTTP requests served, by method, route template and status class.",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            "http_request_duration_seconds",
            "Time to serve an HTTP request, by method, route template and status class.",
            labels=labels,
        )
        for (method, route, status), series in sorted(merged.items()):
            values = [method, route, _STATUS_CLASSES.get(status, "other")]
            requests.add_metric(values, series.count)
            cumulative = 0
            buckets = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), series.buckets, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            duration.add_metric(values, buckets, series.sum)
        in_flight = GaugeMetricFamily("http_requests_in_flight", "HTTP requests being served now.")
        in_flight.add_metric([], sum(s.in_flight for s in self.sources))
        return [requests, duration, in_flight]


_COLLECTOR = HttpCollector()
REGISTRY.register(_COLLECTOR)
