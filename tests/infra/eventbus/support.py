"""The event bus tests' helpers: polling with a deadline and reading metrics (shared ones)."""

from __future__ import annotations

from tests.support.metrics import metric
from tests.support.polling import eventually

__all__ = ["eventually", "metric"]
