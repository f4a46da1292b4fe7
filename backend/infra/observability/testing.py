"""Helpers for tests of code that traces: capture the spans it finishes, in memory.

The way `structlog.testing.capture_logs` captures log entries::

    from backend.infra.observability.testing import capture_spans

    with capture_spans() as captured:
        handle(request)
    (span,) = captured.named("handle")

A capture sees every span finished (and sampled) anywhere in the process while it is
installed, through the tracer provider `init_observability` set up; leaving the block removes
it again. It is built on the SDK's public hooks only (`TracerProvider.add_span_processor` and
the `SpanProcessor` interface), so an SDK upgrade cannot break it silently.

For pytest, the `captured_spans` fixture does the same for one test; load it with
``pytest_plugins = ("backend.infra.observability.testing",)`` in the top-level conftest.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._errors import ObservabilityError
from ._otel import HAS_SDK, INSTALL_HINT, SpanProcessor, TracerProvider, otel_trace

__all__ = ["SpanCapture", "capture_spans", "captured_spans"]


class SpanCapture:
    """The spans finished while a capture was installed, in the order they ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Any] = []

    @property
    def spans(self) -> list[Any]:
        """A copy of the captured `ReadableSpan`s, oldest first."""
        with self._lock:
            return list(self._spans)

    def get_finished_spans(self) -> tuple[Any, ...]:
        """The captured spans, as the SDK's `InMemorySpanExporter` names that call."""
        return tuple(self.spans)

    def named(self, name: str) -> list[Any]:
        """The captured spans called `name`, oldest first."""
        return [span for span in self.spans if span.name == name]

    def clear(self) -> None:
        """Forget the spans captured so far; the capture stays installed."""
        with self._lock:
            self._spans.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._spans)

    def _record(self, span: Any) -> None:
        with self._lock:
            self._spans.append(span)


if HAS_SDK:

    class _CaptureFanout(SpanProcessor):
        """Added once to a provider; hands each finished span to the captures installed now.

        The SDK can add a span processor but not remove one, so each provider gets a single
        fan-out for its lifetime and captures come and go inside it.
        """

        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._captures: tuple[SpanCapture, ...] = ()

        def attach(self, capture: SpanCapture) -> None:
            with self._lock:
                self._captures = (*self._captures, capture)

        def detach(self, capture: SpanCapture) -> None:
            with self._lock:
                self._captures = tuple(c for c in self._captures if c is not capture)

        def on_end(self, span: Any) -> None:
            # What an exporter behind a `SimpleSpanProcessor` receives: sampled spans only.
            if not span.context.trace_flags.sampled:
                return
            for capture in self._captures:
                capture._record(span)

        def shutdown(self) -> None:
            with self._lock:
                self._captures = ()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    _FANOUTS: weakref.WeakKeyDictionary[Any, _CaptureFanout] = weakref.WeakKeyDictionary()
    _FANOUTS_LOCK = threading.Lock()

    def _fanout(provider: Any) -> _CaptureFanout:
        with _FANOUTS_LOCK:
            fanout = _FANOUTS.get(provider)
            if fanout is None:
                fanout = _CaptureFanout()
                provider.add_span_processor(fanout)
                _FANOUTS[provider] = fanout
            return fanout


@contextmanager
def capture_spans(provider: Any | None = None) -> Iterator[SpanCapture]:
    """Capture every span finished in this process while the block runs.

    `provider` defaults to the global tracer provider, the one `init_observability` installs.
    Raises `ObservabilityError` when the OpenTelemetry SDK is not installed or no SDK tracer
    provider is set up (tracing off, or `init_observability` not called yet): a capture that
    could never see a span would make a test pass for the wrong reason.
    """
    if not HAS_SDK:
        raise ObservabilityError(f"capture_spans needs the OpenTelemetry SDK: {INSTALL_HINT}")
    target = provider if provider is not None else otel_trace.get_tracer_provider()
    if not isinstance(target, TracerProvider):
        raise ObservabilityError(
            "capture_spans found no SDK tracer provider "
            f"(the global one is a {type(target).__name__}): call "
            "init_observability(..., enable_tracing=True) first, with tracing not switched "
            "off by the environment"
        )
    fanout = _fanout(target)
    capture = SpanCapture()
    fanout.attach(capture)
    try:
        yield capture
    finally:
        fanout.detach(capture)


def _spans_fixture() -> Iterator[SpanCapture]:
    """pytest fixture: the spans finished during one test (tracing must be initialised)."""
    with capture_spans() as capture:
        yield capture


captured_spans: Any
try:
    import pytest
except ImportError:  # pragma: no cover - a production install has no pytest
    captured_spans = None
else:
    captured_spans = pytest.fixture(name="captured_spans")(_spans_fixture)
