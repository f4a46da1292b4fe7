"""trading-bot: the strategy loop from market ticks to signals, sizing, risk checks and orders."""
