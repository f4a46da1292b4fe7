"""`python -m quantum_trader`: the same as the `quantum-trader` command."""

from quantum_trader.cli import main

main(prog_name="quantum-trader")
