"""Tests of the services' contracts and their typed clients."""
