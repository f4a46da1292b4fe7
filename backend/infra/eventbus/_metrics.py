"""Prometheus metrics of the event bus (default registry, names prefixed `eventbus_`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Handler durations and time in stream, in seconds: 0.5 ms .. 60 s.
BUCKETS = (
    0.0005,
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
    30.0,
    60.0,
)

PUBLISHED = Counter(
    "eventbus_published_total", "Events stored in a stream (publish returned).", ["stream"]
)
PUBLISH_FAILURES = Counter(
    "eventbus_publish_failures_total", "Publish calls that raised, by stream.", ["stream"]
)
CONSUMED = Counter(
    "eventbus_consumed_total",
    "Events handled successfully and acknowledged, by stream and consumer group.",
    ["stream", "group"],
)
FAILED = Counter(
    "eventbus_failed_total",
    "Handler failures (each failed attempt), by stream and consumer group.",
    ["stream", "group"],
)
DEAD_LETTERED = Counter(
    "eventbus_dead_lettered_total",
    "Entries moved to the dead-letter stream, by stream, group and reason.",
    ["stream", "group", "reason"],
)
DUPLICATES = Counter(
    "eventbus_duplicates_skipped_total",
    "Redelivered events skipped because their id was already processed.",
    ["stream", "group"],
)
RECLAIMED = Counter(
    "eventbus_reclaimed_total",
    "Entries taken over from consumers that left them pending too long (XAUTOCLAIM).",
    ["stream", "group"],
)
HANDLER_SECONDS = Histogram(
    "eventbus_handler_duration_seconds",
    "Time a handler took, successful or not.",
    ["stream", "group"],
    buckets=BUCKETS,
)
TIME_IN_STREAM = Histogram(
    "eventbus_time_in_stream_seconds",
    "Handling start minus the event's time: how long the event waited.",
    ["stream", "group"],
    buckets=BUCKETS,
)
PENDING = Gauge(
    "eventbus_pending_entries",
    "Entries delivered to the group but not yet acknowledged.",
    ["stream", "group"],
)
LAG = Gauge(
    "eventbus_consumer_lag_entries",
    "Entries in the stream not yet delivered to the group (capped estimate on Redis < 7).",
    ["stream", "group"],
)
RECONNECT_WAITS = Counter(
    "eventbus_redis_retries_total",
    "Operations retried because Redis was unreachable, by role (publisher, consumer).",
    ["role"],
)
TASK_FAILURES = Counter(
    "eventbus_background_task_failures_total",
    "Unexpected failures of a background task of the bus (restarted after a back-off).",
    ["task"],
)


class ConsumerMetrics:
    """The label children of one (stream, group), resolved once instead of per event."""

    __slots__ = (
        "_group",
        "_stream",
        "consumed",
        "dead_lettered",
        "duplicates",
        "failed",
        "handler_seconds",
        "lag",
        "pending",
        "reclaimed",
        "time_in_stream",
    )

    def __init__(self, stream: str, group: str) -> None:
        self._stream = stream
        self._group = group
        self.consumed: Any = CONSUMED.labels(stream, group)
        self.failed: Any = FAILED.labels(stream, group)
        self.duplicates: Any = DUPLICATES.labels(stream, group)
        self.reclaimed: Any = RECLAIMED.labels(stream, group)
        self.handler_seconds: Any = HANDLER_SECONDS.labels(stream, group)
        self.time_in_stream: Any = TIME_IN_STREAM.labels(stream, group)
        self.pending: Any = PENDING.labels(stream, group)
        self.lag: Any = LAG.labels(stream, group)
        self.dead_lettered: dict[str, Any] = {}

    def dead_letter(self, reason: str) -> None:
        child = self.dead_lettered.get(reason)
        if child is None:
            child = self.dead_lettered[reason] = DEAD_LETTERED.labels(
                self._stream, self._group, reason
            )
        child.inc()
