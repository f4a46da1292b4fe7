"""Tests of the risk-safety service."""
