"""The Collector configuration uses only components of the pinned distribution, wired soundly."""

from __future__ import annotations

from typing import Any

from .conftest import load_yaml

KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")


def component_type(name: str) -> str:
    """`otlp/tempo` -> `otlp`: the part before the slash names the component."""
    return name.split("/", 1)[0]


def config() -> dict[str, Any]:
    return load_yaml("otel-collector.yaml")  # type: ignore[no-any-return]


def test_every_component_is_in_the_pinned_distribution() -> None:
    components = load_yaml("otelcol-components.yaml")
    compose = load_yaml("compose.yaml")
    image = compose["services"]["otel-collector"]["image"]
    assert image == f"otel/opentelemetry-collector-contrib:{components['version']}", (
        "otelcol-components.yaml lists the components of the image compose runs"
    )
    collector = config()
    for kind in KINDS:
        unknown = {n for n in collector.get(kind, {}) if component_type(n) not in components[kind]}
        assert not unknown, f"{kind} not in otelcol-contrib {components['version']}: {unknown}"


def test_pipelines_reference_defined_components_and_every_defined_one_is_used() -> None:
    collector = config()
    service = collector["service"]
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pipeline in service["pipelines"].items():
        signal = name.split("/", 1)[0]
        assert signal in {"traces", "metrics", "logs"}, name
        for receiver in pipeline["receivers"]:
            kind = "connectors" if receiver in collector.get("connectors", {}) else "receivers"
            assert receiver in collector[kind], f"{name}: {receiver} is not defined"
            used[kind].add(receiver)
        for processor in pipeline.get("processors", []):
            assert processor in collector["processors"], f"{name}: {processor} is not defined"
            used["processors"].add(processor)
        for exporter in pipeline["exporters"]:
            kind = "connectors" if exporter in collector.get("connectors", {}) else "exporters"
            assert exporter in collector[kind], f"{name}: {exporter} is not defined"
            used[kind].add(exporter)
    used["extensions"] = set(service.get("extensions", []))
    for kind in KINDS:
        assert set(collector.get(kind, {})) == used[kind], f"{kind} defined but unused"
    # A connector joins two pipelines: it must export from one and receive in another.
    for connector in collector.get("connectors", {}):
        exports = [p for p in service["pipelines"].values() if connector in p["exporters"]]
        receives = [p for p in service["pipelines"].values() if connector in p["receivers"]]
        assert exports and receives, f"connector {connector} is not wired at both ends"


def test_memory_limiter_comes_first_and_batch_last_in_every_pipeline() -> None:
    for name, pipeline in config()["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", name
        if "batch" in processors:
            assert processors[-1] == "batch", name


def test_span_metrics_see_every_span_and_tempo_gets_the_tail_sampled_ones() -> None:
    collector = config()
    pipelines = collector["service"]["pipelines"]
    to_spanmetrics = [p for p in pipelines.values() if "spanmetrics" in p["exporters"]]
    assert to_spanmetrics and all(
        "tail_sampling" not in p.get("processors", []) for p in to_spanmetrics
    ), "span metrics must count spans before sampling drops any"
    to_tempo = [p for p in pipelines.values() if "otlp/tempo" in p["exporters"]]
    assert to_tempo and all("tail_sampling" in p["processors"] for p in to_tempo)
    assert collector["connectors"]["spanmetrics"]["exemplars"]["enabled"] is True
    assert collector["exporters"]["prometheus"]["enable_open_metrics"] is True


def test_tail_sampling_keeps_orders_fills_denials_stop_triggers_and_errors() -> None:
    policies = config()["processors"]["tail_sampling"]["policies"]
    types = {p["type"] for p in policies}
    assert "status_code" in types
    (errors,) = [p for p in policies if p["type"] == "status_code"]
    assert errors["status_code"]["status_codes"] == ["ERROR"]
    (decisions,) = [p for p in policies if p["type"] == "ottl_condition"]
    conditions = "\n".join(decisions["ottl_condition"]["span"])
    for needle in (
        'name == "order.submit"',  # an order (execution)
        'name == "order.fill"',  # a fill
        'name == "risk.check" and attributes["approved"] == false',  # a risk denial
        'IsMatch(name, "^stop\\\\.")',  # a stop trigger (position-monitor)
    ):
        assert needle in conditions, needle
    # The rest is sampled, not dropped and not all kept.
    (baseline,) = [p for p in policies if p["type"] == "probabilistic"]
    assert 0 < baseline["probabilistic"]["sampling_percentage"] < 100
