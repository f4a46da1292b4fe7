"""The `quantum-trader` command: the launcher of the whole system and the entry to each service."""
