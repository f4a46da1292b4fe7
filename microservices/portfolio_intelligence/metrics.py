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
