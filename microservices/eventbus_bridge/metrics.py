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
