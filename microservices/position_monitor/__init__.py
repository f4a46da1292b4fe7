"""position-monitor: stop loss, take profit, trailing stop and time limit on open positions."""
