"""portfolio-intelligence's trading metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FILLS_BOOKED = Counter("portfolio_fills_booked_total", "Fills booked into the ledger.", ["symbol"])
DUPLICATE_FILLS = Counter(
    "portfolio_duplicate_fills_total", "Fills received again and not booked a second time."
)
OUT_OF_ORDER_FILLS = Counter(
    "portfolio_out_of_order_fills_total",
    "Fills received after a later fill of their symbol, booked by replaying the ledger in order.",
)
EQUITY = Gauge("portfolio_equity", "Cash plus marked positions, quote currency.")
CASH = Gauge("portfolio_cash", "Cash after fills and fees.")
REALIZED_PNL = Gauge("portfolio_realized_pnl", "Realized PnL before fees.")
UNREALIZED_PNL = Gauge("portfolio_unrealized_pnl", "Unrealized PnL of open positions at marks.")
FEES = Gauge("portfolio_fees", "Fees paid since the ledger began.")
GROSS_EXPOSURE = Gauge("portfolio_gross_exposure", "Sum of absolute marked position values.")
NET_EXPOSURE = Gauge("portfolio_net_exposure", "Sum of signed marked position values.")
DRAWDOWN = Gauge("portfolio_drawdown_ratio", "Fall of equity from its peak, as a fraction.")
POSITION = Gauge("portfolio_position_quantity", "Signed position, by symbol.", ["symbol"])
CONFLICTING_FILLS = Counter(
    "portfolio_conflicting_fills_total",
    "Fills received with the id of a booked fill but other contents; not booked.",
)

# Freshness: whether the books hold every fill on order.filled (refreshed on each check).
FILLS_COMPLETE = Gauge(
    "portfolio_fills_complete",
    "1 when the last check found every fill on the stream booked, else 0.",
)
CHECKED_TIMESTAMP = Gauge(
    "portfolio_fills_checked_timestamp_seconds",
    "Unix time the latest check of the fill stream started (the check loop is alive).",
)
COMPLETE_TIMESTAMP = Gauge(
    "portfolio_fills_complete_timestamp_seconds",
    "Unix time the books were last known to hold every fill (GET /portfolio as_of_ms).",
)
FILL_PENDING = Gauge(
    "portfolio_fill_pending",
    "Fills delivered to the portfolio's consumer group and not acknowledged.",
)
FILL_LAG = Gauge(
    "portfolio_fill_lag",
    "Fills on the stream not yet delivered to the portfolio's consumer group (NaN: unknown).",
)
DEAD_LETTERS = Gauge(
    "portfolio_dead_letters",
    "Fills the portfolio's consumer group moved to the dead-letter stream (still there).",
)
SEQUENCE_GAPS = Gauge(
    "portfolio_fill_sequence_gaps",
    "Venue fill sequences missing below the highest one booked.",
)
BOOKED_SEQUENCE = Gauge(
    "portfolio_booked_sequence",
    "Highest venue fill sequence with every sequence up to it booked.",
)
MAX_SEQUENCE = Gauge("portfolio_max_sequence", "Highest venue fill sequence booked.")
