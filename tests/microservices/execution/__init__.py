"""Tests of the execution service."""
