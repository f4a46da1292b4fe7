"""Suite-wide fixtures: in-process tracing with an in-memory exporter, and service URLs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Property tests explore the same examples on every run (reproducible failures, stable CI);
# HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def require_service(available: bool, reason: str) -> None:
    """Skip (printing why) when a real server is unreachable; fail instead on CI.

    `.ci/run` sets QT_REQUIRE_SERVICES=1 so CI cannot pass by skipping.
    """
    if available:
        return
    if os.environ.get("QT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _tracing_runtime() -> object:
    from backend.infra.observability import _tracing, init_observability

    init_observability("test-suite", "INFO", enable_tracing=True, enable_metrics=True)
    rt = _tracing.runtime()
    assert rt is not None, "the test suite needs the OpenTelemetry SDK installed"
    return rt


@pytest.fixture
def span_exporter(_tracing_runtime: object) -> Iterator[object]:
    """An `InMemorySpanExporter` receiving every span finished in this process during a test."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = _tracing_runtime.provider  # type: ignore[attr-defined]
    multi = provider._active_span_processor
    multi.add_span_processor(processor)
    try:
        yield exporter
    finally:
        with multi._lock:
            multi._span_processors = tuple(p for p in multi._span_processors if p is not processor)
