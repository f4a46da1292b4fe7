"""The lean SERVER span keeps the SDK's contract where it matters: processors see it start,
span limits apply, a custom sampler decides, and OTEL_PROPAGATORS decides what an incoming
request continues."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import propagate
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind

from backend.infra.observability import _tracing, instrument_fastapi

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def make_client() -> TestClient:
    app = FastAPI()
    instrument_fastapi(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return TestClient(app)


class StartProbe(SpanProcessor):
    """Records the spans it sees start while `active`."""

    def __init__(self) -> None:
        self.active = True
        self.started: list[tuple[str, dict[str, Any], Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.active:
            self.started.append((span.name, dict(span.attributes), parent_context))


def test_registered_processors_see_the_server_span_start(span_exporter) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    probe = StartProbe()
    rt.provider.add_span_processor(probe)
    try:
        make_client().get("/items/3", headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
    finally:
        probe.active = False
    (name, attributes, parent_context), *_ = probe.started
    assert name == "GET"  # the route is known only once the app has routed it
    assert attributes["url.path"] == "/items/3"
    from opentelemetry.trace import get_current_span

    assert f"{get_current_span(parent_context).get_span_context().trace_id:032x}" == TRACE_ID


def test_span_limits_apply_to_the_server_span(
    span_exporter, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    monkeypatch.setattr(rt, "max_attribute_length", 10)
    monkeypatch.setattr(rt, "max_attributes", 3)
    make_client().get("/items/1234567890123")
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(span.attributes) == 3
    assert all(len(v) <= 10 for v in span.attributes.values() if isinstance(v, str))


def test_otel_propagators_none_ignores_incoming_context(
    span_exporter, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    previous = propagate.get_global_textmap()
    monkeypatch.setattr(_tracing, "CUSTOM_PROPAGATORS", [True])
    propagate.set_global_textmap(CompositePropagator([]))  # what OTEL_PROPAGATORS=none builds
    try:
        make_client().get("/items/1", headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
    finally:
        propagate.set_global_textmap(previous)
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != TRACE_ID


class KeepUnlessHealthy(Sampler):
    """A custom sampler: drops `/items/7`, samples the rest and says so in an attribute."""

    def should_sample(  # type: ignore[override]
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if attributes and attributes.get("url.path") == "/items/7":
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"sampler.rule": "keep"})

    def get_description(self) -> str:
        return "KeepUnlessHealthy"


def test_a_custom_sampler_decides_for_the_server_span(
    span_exporter, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    rt = _tracing.runtime()
    assert rt is not None
    monkeypatch.setattr(rt, "custom_sampler", KeepUnlessHealthy())
    client = make_client()
    client.get("/items/7")
    client.get("/items/8")
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.attributes["url.path"] == "/items/8"
    assert span.attributes["sampler.rule"] == "keep"


def test_an_installed_sampler_is_accepted_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.infra.observability import ObservabilityConfigError, _config

    with pytest.raises(ObservabilityConfigError) as info:
        _config.load_config("s", env={"OTEL_TRACES_SAMPLER": "no_such_sampler"})
    assert "entry point" in str(info.value)
    monkeypatch.setattr(_config, "_sampler_entry_point", lambda name: object())
    config = _config.load_config(
        "s", env={"OTEL_TRACES_SAMPLER": "xray", "OTEL_TRACES_SAMPLER_ARG": "rules.json"}
    )
    assert config.custom_sampler == ("xray", "rules.json")
