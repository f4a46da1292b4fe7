"""eventbus-bridge's feed metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICKS_PUBLISHED = Counter(
    "feed_ticks_published_total", "Market ticks published to the bus, by symbol.", ["symbol"]
)
FEED_LAG = Histogram(
    "feed_lag_seconds",
    "How late a tick was published against its schedule (wall clock).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FEED_STALLS = Counter("feed_stalls_total", "Feed stalls detected, by symbol.", ["symbol"])
FEED_STALLED = Gauge("feed_stalled", "1 while a symbol's feed is stalled.", ["symbol"])

# Outgoing webhooks ---------------------------------------------------------------------------

WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook deliveries by event type and final outcome: delivered, failed (retries exhausted) "
    "or rejected (a 4xx the receiver will not change its mind on); failed and rejected ones "
    "are dead-lettered.",
    ["event_type", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "webhook_attempts_total",
    "Webhook HTTP attempts by event type and result: ok, retryable (connection error, timeout, "
    "408, 429, 5xx) or permanent (any other status).",
    ["event_type", "result"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "webhook_attempt_seconds",
    "Duration of one webhook HTTP attempt.",
    ["event_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "webhook_delivery_seconds",
    "From the event's enqueueing to its successful delivery (queueing and retries included).",
    ["event_type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
WEBHOOK_QUEUE_DEPTH = Gauge("webhook_queue_depth", "Webhook deliveries waiting in the queue.")
WEBHOOK_QUEUE_DROPS = Counter(
    "webhook_queue_dropped_total",
    "Webhook deliveries dropped because the queue was full, by event type.",
    ["event_type"],
)
WEBHOOK_DEAD_LETTER_ERRORS = Counter(
    "webhook_dead_letter_errors_total",
    "Dead-letter records that could not be written (Redis unreachable); the delivery is lost.",
)
