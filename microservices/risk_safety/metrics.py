"""risk-safety's trading metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter(
    "risk_decisions_total", "Pre-trade decisions, by outcome and reason.", ["approved", "reason"]
)
DENIALS = Counter("risk_denials_total", "Orders denied, by reason code.", ["reason"])
CHECK_DURATION = Histogram(
    "risk_check_duration_seconds",
    "Time to decide on an order, portfolio fetch included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TRADING_STATE = Gauge(
    "risk_trading_state", "1 for the trading state in force, 0 for the others.", ["state"]
)
STATE_CHANGES = Counter(
    "risk_state_changes_total", "Trading-state changes, by new state.", ["state"]
)
PORTFOLIO_REACHABLE = Gauge(
    "risk_portfolio_reachable", "1 when the last portfolio fetch succeeded."
)
PORTFOLIO_AGE = Gauge(
    "risk_portfolio_age_seconds", "Age of the last portfolio snapshot when it was fetched."
)
STATE_UNRECORDED = Gauge(
    "risk_trading_state_unrecorded",
    "1 while a trading-state change is in force but the database has not taken its record.",
)
STATE_PUSH_FAILURES = Counter(
    "risk_state_push_failures_total",
    "Trading-state pushes to execution that were not acknowledged.",
)
STATE_PUSH_DURATION = Histogram(
    "risk_state_push_duration_seconds",
    "Time for execution to answer a pushed trading state (failures included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EXPOSURE_REACHABLE = Gauge(
    "risk_execution_exposure_reachable", "1 when the last read of execution's exposure succeeded."
)
QUOTE_AGE = Gauge(
    "risk_quote_age_seconds", "Age of the reference quote an order was judged at.", ["symbol"]
)
FILL_LAG = Gauge(
    "risk_portfolio_fill_lag_seconds",
    "How long the portfolio has been behind execution's fill sequence, at the last check.",
)
