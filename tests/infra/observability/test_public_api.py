"""The public surface is the seed's API plus a few named helpers, and nothing leaks."""

from __future__ import annotations

import types

import backend.infra.observability as obs

# Submodules that are public API in their own right (imported as
# `backend.infra.observability.<name>`); any other module under a public name is a leak.
PUBLIC_SUBMODULES = {"testing"}


def test_all_names_are_exported_and_nothing_else() -> None:
    public = {name for name in dir(obs) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(obs, name), types.ModuleType)}
    assert public - modules - {"annotations"} == set(obs.__all__)


def test_no_module_is_reachable_under_a_public_name_but_the_public_submodules() -> None:
    import backend.infra.observability.testing  # noqa: F401 - make it an attribute, as in use

    public = {name for name in dir(obs) if not name.startswith("_")}
    modules = {name: getattr(obs, name) for name in public}
    modules = {n: m for n, m in modules.items() if isinstance(m, types.ModuleType)}
    assert set(modules) == PUBLIC_SUBMODULES, "a private or foreign module leaks as public"
    assert all(m.__name__ == f"{obs.__name__}.{n}" for n, m in modules.items())
    assert not any(name.startswith("_") for name in obs.__all__)


def test_seed_api_is_present() -> None:
    for name in (
        "init_observability",
        "get_logger",
        "get_tracer",
        "instrument_fastapi",
        "add_metrics_middleware",
    ):
        assert name in obs.__all__


def test_seed_p2_snippet_runs_as_written(span_exporter) -> None:  # type: ignore[no-untyped-def]
    from backend.infra.observability import get_tracer

    class Signal:
        symbol = "BTCUSDT"
        confidence = 0.83

    def process_signal(signal: Signal) -> str:
        return "BUY"

    signal = Signal()
    tracer = get_tracer(__name__)

    with tracer.start_as_current_span("process_signal") as span:
        span.set_attribute("symbol", signal.symbol)
        span.set_attribute("confidence", signal.confidence)
        result = process_signal(signal)
        span.set_attribute("result", result)

    (finished,) = span_exporter.get_finished_spans()
    assert finished.name == "process_signal"
    assert dict(finished.attributes) == {
        "symbol": "BTCUSDT",
        "confidence": 0.83,
        "result": "BUY",
    }


def test_init_observability_is_idempotent() -> None:
    first = obs.init_observability("test-suite", "INFO", True, True)
    second = obs.init_observability("another-name", "DEBUG", False, False)
    assert second is first
