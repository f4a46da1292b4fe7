"""execution's trading metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS = Counter(
    "execution_orders_total", "Order transitions, by the status the order moved to.", ["status"]
)
APPROVAL_REFUSALS = Counter(
    "execution_approval_refusals_total",
    "Orders refused for their risk approval, by problem (MISSING, INVALID, EXPIRED, REVOKED).",
    ["problem"],
)
DUPLICATES = Counter(
    "execution_duplicate_orders_total", "Submissions of a client order id already known."
)
CONFLICTS = Counter(
    "execution_order_conflicts_total",
    "Submissions reusing a known client order id with a different order (answered 409).",
)
FILLS = Counter(
    "execution_fills_total", "Fills on the paper venue.", ["symbol", "side", "liquidity"]
)
FILLED_NOTIONAL = Counter(
    "execution_filled_notional_total", "Quantity times price of all fills, quote currency."
)
FEES = Counter("execution_fees_total", "Fees charged on fills, quote currency.")
ORDER_TO_FILL = Histogram(
    "execution_order_to_fill_seconds",
    "Time from an order's acceptance to each of its fills (wall clock).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0),
)
OPEN_ORDERS = Gauge("execution_open_orders", "Orders working on the venue.")
RESERVED_CASH = Gauge("execution_reserved_cash", "Cash reserved for open buy orders.")
AVAILABLE_CASH = Gauge("execution_available_cash", "Cash free for new buy orders.")
BAD_TICKS = Counter(
    "execution_bad_ticks_total", "Market ticks ignored as unusable, by symbol.", ["symbol"]
)
TICKS_OUT_OF_ORDER = Counter(
    "execution_ticks_out_of_order_total",
    "Market ticks ignored by a shared venue as older than the quote it holds, by symbol.",
    ["symbol"],
)
VENUE_CATCH_UPS = Counter(
    "execution_venue_catch_ups_total",
    "Times a replica sharing the venue took in orders and fills another replica wrote.",
)

# The trading state execution enforces (see riskstate.py).
RISK_STATE = Gauge(
    "execution_risk_state",
    "1 for the trading state execution enforces, by state; UNKNOWN before the first verified "
    "state and while the lease has lapsed.",
    ["state"],
)
RISK_EPOCH = Gauge("execution_risk_epoch", "Trading-state epoch execution enforces (-1: none).")
RISK_LEASE_AGE = Gauge(
    "execution_risk_lease_age_seconds",
    "Seconds since the last verified trading state from risk-safety (+Inf before the first).",
)
RISK_STATE_UPDATES = Counter(
    "execution_risk_state_updates_total",
    "Signed trading states received, by source (push, poll) and outcome "
    "(adopted, current, stale, conflict, invalid).",
    ["source", "outcome"],
)
RISK_POLL_FAILURES = Counter(
    "execution_risk_poll_failures_total",
    "Polls of risk-safety's GET /state that gave no verified state, by error.",
    ["error"],
)
RISK_REFUSALS = Counter(
    "execution_risk_refusals_total",
    "Exposure-increasing orders refused because trading is not open, by enforced state.",
    ["state"],
)
RISK_CANCELS = Counter(
    "execution_risk_cancels_total",
    "Working orders canceled because the trading state stopped being ACTIVE.",
)
