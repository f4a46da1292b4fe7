"""eventbus-bridge: market data into the bus (simulated or replayed ticks), with stall detection,
and selected events out of it to external webhooks, signed and traced."""
