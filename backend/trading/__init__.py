"""Trading domain: market simulation, signals, sizing, risk, orders, paper fills and PnL."""
