"""Tests of the Quantum Trader services, one package per service."""
