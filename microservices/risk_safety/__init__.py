"""risk-safety: pre-trade checks, the trading state and the kill switch (port 8003)."""
