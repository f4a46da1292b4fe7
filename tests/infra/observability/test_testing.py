"""`backend.infra.observability.testing`: capturing the spans a block finishes, in memory."""

from __future__ import annotations

import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from backend.infra.observability import ObservabilityConfig, ObservabilityError, get_tracer
from backend.infra.observability.testing import SpanCapture, capture_spans
from tests.infra.observability.test_without_opentelemetry import run_blocked

pytestmark = pytest.mark.usefixtures("_tracing_runtime")


def finish(name: str) -> None:
    with get_tracer(__name__).start_as_current_span(name):
        pass


def test_a_capture_holds_the_spans_finished_inside_the_block_in_the_order_they_ended() -> None:
    finish("before")
    with capture_spans() as captured:
        tracer = get_tracer(__name__)
        with tracer.start_as_current_span("outer"):
            finish("inner")
        finish("last")
    finish("after")

    assert [s.name for s in captured.spans] == ["inner", "outer", "last"]
    (inner,) = captured.named("inner")
    (outer,) = captured.named("outer")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert captured.get_finished_spans() == tuple(captured.spans)
    assert len(captured) == 3


def test_clear_forgets_what_was_captured_and_keeps_capturing() -> None:
    with capture_spans() as captured:
        finish("first")
        captured.clear()
        finish("second")
    assert [s.name for s in captured.spans] == ["second"]


def test_nested_captures_each_see_their_own_window() -> None:
    with capture_spans() as outer:
        finish("a")
        with capture_spans() as inner:
            finish("b")
        finish("c")
    assert [s.name for s in outer.spans] == ["a", "b", "c"]
    assert [s.name for s in inner.spans] == ["b"]


def test_spans_finished_on_other_threads_are_captured() -> None:
    with capture_spans() as captured:
        workers = [threading.Thread(target=finish, args=(f"t{n}",)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert sorted(s.name for s in captured.spans) == ["t0", "t1", "t2", "t3"]


def test_a_capture_can_watch_a_provider_of_its_own() -> None:
    provider = TracerProvider()
    with capture_spans(provider) as own, capture_spans() as global_:
        with provider.get_tracer(__name__).start_as_current_span("private"):
            pass
        finish("global")
    assert [s.name for s in own.spans] == ["private"]
    assert [s.name for s in global_.spans] == ["global"]


def test_unsampled_spans_are_not_captured_as_no_exporter_would_receive_them() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer = provider.get_tracer(__name__)
    with capture_spans(provider) as captured, tracer.start_as_current_span("dropped"):
        pass
    assert captured.spans == []


@pytest.mark.parametrize(
    "provider", [trace.NoOpTracerProvider(), trace.ProxyTracerProvider()], ids=type
)
def test_a_capture_that_could_never_see_a_span_is_refused_with_the_fix(
    provider: trace.TracerProvider,
) -> None:
    refused = pytest.raises(ObservabilityError, match=r"no SDK tracer provider.*init_observability")
    with refused, capture_spans(provider):
        pass


def test_the_captured_spans_fixture_yields_the_spans_of_its_test(
    _tracing_runtime: ObservabilityConfig, captured_spans: SpanCapture
) -> None:
    finish("in the test")
    assert [s.name for s in captured_spans.spans] == ["in the test"]


def test_without_the_sdk_capture_spans_says_what_to_install() -> None:
    (message,) = run_blocked(
        ["opentelemetry"],
        """
        from backend.infra.observability import ObservabilityError
        from backend.infra.observability.testing import capture_spans
        try:
            with capture_spans():
                pass
        except ObservabilityError as exc:
            print(exc)
        """,
    )
    assert "OpenTelemetry SDK" in message and "pip install" in message
