"""Suite-wide set-up: the shared fixtures (`tests.support.plugin`), in-process tracing in memory."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from backend.infra.observability import ObservabilityConfig
    from backend.infra.observability.testing import SpanCapture

# The public `captured_spans` fixture, for tests that want it by that name (this module imports
# that plugin only lazily, so that pytest is the first to import it), and the suite's own
# fixtures: Redis, databases, the in-process service harness.
pytest_plugins = ("backend.infra.observability.testing", "tests.support.plugin")

# Property tests explore the same examples on every run (reproducible failures, stable CI);
# HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def _tracing_runtime() -> ObservabilityConfig:
    """Tracing and metrics set up once for the whole run, with the SDK's tracer provider."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from backend.infra.observability import init_observability

    config = init_observability("test-suite", "INFO", enable_tracing=True, enable_metrics=True)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), (
        f"the test suite needs the OpenTelemetry SDK's tracer provider, not {provider!r}"
    )
    return config


@pytest.fixture
def span_exporter(_tracing_runtime: ObservabilityConfig) -> Iterator[SpanCapture]:
    """Every span finished in this process during a test (`get_finished_spans()`)."""
    from backend.infra.observability.testing import capture_spans

    with capture_spans() as captured:
        yield captured


@pytest.fixture
def log_lines(_tracing_runtime: object) -> Iterator[io.StringIO]:
    """Capture what the log sink writes (the same bytes stdout gets)."""
    from backend.infra.observability._logging import SINK

    class Captured(io.StringIO):
        """Reads include what the sink still holds (INFO lines are written by its flusher)."""

        def getvalue(self) -> str:
            SINK.flush()
            return super().getvalue()

    buffer = Captured()
    previous = SINK._stream_getter
    SINK.flush()
    SINK._stream_getter = lambda: buffer  # type: ignore[assignment,return-value]
    try:
        yield buffer
    finally:
        SINK.flush()
        SINK._stream_getter = previous
