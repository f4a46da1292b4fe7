"""portfolio-intelligence: positions, cash, PnL and performance from the fill ledger (port 8004)."""
