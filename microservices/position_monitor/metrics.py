"""position-monitor's metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from backend.trading.stops import ExitReason

POSITIONS = Gauge(
    "position_monitor_positions", "Positions position-monitor holds, by status.", ["status"]
)
TRIGGERS = Counter(
    "position_monitor_triggers_total", "Stops that triggered, by exit reason.", ["reason"]
)
EXITS = Counter(
    "position_monitor_exit_orders_total",
    "Exit orders sent (again, for a retry), by stage (EXIT, EMERGENCY) and outcome.",
    ["stage", "outcome"],
)
ESCALATIONS = Counter(
    "position_monitor_escalations_total",
    "Exits refused or not filled in time that escalated to an emergency market exit.",
    ["reason"],
)
ALERTS = Counter(
    "position_monitor_alerts_total",
    "Exits given up after the emergency exit failed too: a position left open (alert).",
    ["reason"],
)
TRAILING_LEVEL = Gauge(
    "position_monitor_trailing_level",
    "The trailing stop's level of the open position, by symbol (0 when none is armed).",
    ["symbol"],
)
CLOSED = Counter("position_monitor_closed_total", "Positions seen closed.")
RECONCILED = Gauge(
    "position_monitor_reconciled_timestamp_seconds",
    "When the positions last matched portfolio-intelligence's `GET /portfolio` (0: never).",
)
RECONCILE_FAILURES = Counter(
    "position_monitor_reconcile_failures_total",
    "Comparisons with portfolio-intelligence's positions that could not be made.",
)

# Every reason's series exists from the start, at 0: an alert on its increase sees the first one.
for _reason in ExitReason:
    ALERTS.labels(_reason.value)
    TRIGGERS.labels(_reason.value)
