"""Reading Prometheus samples of this process in tests."""

from __future__ import annotations

from prometheus_client import REGISTRY


def metric(name: str, **labels: str) -> float:
    """The current value of a sample in the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
