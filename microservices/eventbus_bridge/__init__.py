"""eventbus-bridge: market data into the bus (simulated or replayed ticks), with stall detection."""
