"""The outbox's Prometheus metrics (default registry), labelled by the producing service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PENDING = Gauge(
    "outbox_pending_events",
    "Outbox rows committed but not yet published (refreshed after each relay round).",
    ["source"],
)
OLDEST_PENDING_AGE = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest unpublished outbox row; 0 when none is pending.",
    ["source"],
)
PUBLISHED = Counter("outbox_published_total", "Outbox rows published and marked.", ["source"])
PUBLISH_FAILURES = Counter(
    "outbox_publish_failures_total",
    "Outbox publish rounds that failed (Redis down, timeout, database error).",
    ["source"],
)
