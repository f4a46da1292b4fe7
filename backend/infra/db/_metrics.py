"""Prometheus metrics of the database layer: statement durations and connection-pool gauges."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

# Statements take from ~50 µs (SQLite, cached) to seconds (a migration); 100 µs .. 10 s.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
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
)

QUERY_DURATION = Histogram(
    "db_client_operation_duration_seconds",
    "Time to execute one SQL statement, by database system and operation (SELECT, INSERT…).",
    ["system", "operation"],
    buckets=DURATION_BUCKETS,
)
QUERY_ERRORS = Counter(
    "db_client_operation_errors_total",
    "SQL statements that failed, by database system, operation and error kind.",
    ["system", "operation", "error"],
)


class PoolCollector(Collector):
    """Reads every instrumented engine's pool at scrape time, so the gauges are never stale.

    Engines are held weakly and their `pool` is read on each scrape because `dispose()`
    replaces it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()

    def track(self, engine: Engine, name: str) -> None:
        with self._lock:
            self._engines[engine] = name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily(
            "db_client_connections_pool_size", "Connections the pool keeps open.", labels=["pool"]
        )
        checked_out = GaugeMetricFamily(
            "db_client_connections_checked_out",
            "Connections lent out of the pool now.",
            labels=["pool"],
        )
        overflow = GaugeMetricFamily(
            "db_client_connections_overflow",
            "Connections open beyond the pool size now (bounded by DB_MAX_OVERFLOW).",
            labels=["pool"],
        )
        totals: dict[str, list[int]] = {}
        with self._lock:
            engines = list(self._engines.items())
        for engine, name in engines:
            pool = engine.pool
            # Only queue pools have these counters; NullPool/StaticPool report nothing.
            stats = getattr(pool, "size", None), getattr(pool, "checkedout", None)
            if not all(callable(fn) for fn in stats):
                continue
            row = totals.setdefault(name, [0, 0, 0])
            row[0] += int(pool.size())  # type: ignore[attr-defined]
            row[1] += int(pool.checkedout())  # type: ignore[attr-defined]
            # QueuePool counts overflow from -pool_size upwards; only the excess is overflow.
            row[2] += max(0, int(pool.overflow()))  # type: ignore[attr-defined]
        for name, (n_size, n_out, n_over) in sorted(totals.items()):
            size.add_metric([name], n_size)
            checked_out.add_metric([name], n_out)
            overflow.add_metric([name], n_over)
        yield size
        yield checked_out
        yield overflow


POOLS = PoolCollector()
REGISTRY.register(POOLS)
