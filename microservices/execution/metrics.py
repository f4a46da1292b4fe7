"""execution's trading metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS = Counter(
    "execution_orders_total", "Order transitions, by the status the order moved to.", ["status"]
)
APPROVAL_REFUSALS = Counter(
    "execution_approval_refusals_total",
    "Orders refused for their risk approval, by problem (MISSING, INVALID, EXPIRED).",
    ["problem"],
)
DUPLICATES = Counter(
    "execution_duplicate_orders_total", "Submissions of a client order id already known."
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
