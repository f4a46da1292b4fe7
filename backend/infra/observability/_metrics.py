"""Prometheus metrics of the library, all in prometheus_client's default `REGISTRY`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Buckets for request latency in seconds: 1 ms .. 10 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

UNMATCHED_ROUTE = "__unmatched__"

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests served, by method, route template and status class.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to serve an HTTP request, by method, route template and status class.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests being served now.")

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

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class HttpMetrics:
    """Caches label children so a request costs two dict look-ups, not label resolution."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[object, object]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _KNOWN_METHODS:
            method = "_OTHER"  # arbitrary methods must not create series
        key = (method, route, status // 100)
        children = self._children.get(key)
        if children is None:
            label_method = method
            status_class = _STATUS_CLASSES.get(status // 100, "other")
            children = (
                HTTP_REQUESTS.labels(label_method, route, status_class),
                HTTP_DURATION.labels(label_method, route, status_class),
            )
            self._children[key] = children
        counter, histogram = children
        counter.inc()  # type: ignore[attr-defined]
        histogram.observe(seconds)  # type: ignore[attr-defined]
