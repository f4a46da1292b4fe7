"""Benchmarks: `make bench` runs them; each prints ratios against a baseline from the same run."""
