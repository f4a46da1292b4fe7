"""The nine Quantum Trader services, one package each."""
