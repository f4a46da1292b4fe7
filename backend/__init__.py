"""Quantum Trader: shared infrastructure and trading domain logic."""
