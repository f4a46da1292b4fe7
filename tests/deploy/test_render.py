"""The files that list the services are rendered from the catalogue, and follow it."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from backend.infra.db import TABLE_OWNERS
from backend.infra.service import BUILT_SERVICES, SERVICES, ServiceSpec

from .conftest import DEPLOY, ROOT


def _service_urls(specs: tuple[ServiceSpec, ...]) -> dict[str, str]:
    return {s.url_variable: f"http://{s.name}:{s.port}" for s in specs}


def test_committed_files_are_what_render_produces(render: ModuleType) -> None:
    for path, text in {**render.rendered(), **render.rendered_monitoring()}.items():
        assert path.is_file(), f"{path} is missing; run: python deploy/render.py"
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} differs from its rendering; run: python deploy/render.py"
        )


def test_every_rendered_file_is_tracked_where_compose_and_grafana_look(render: ModuleType) -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in render.rendered()}
    assert {"compose.yaml", "prometheus/prometheus.yml", "k8s/base/services.yaml"} <= names
    assert {n for n in names if n.startswith("grafana/dashboards/")} == {
        f"grafana/dashboards/{p.name}" for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")
    }


def _compose_apps(render: ModuleType) -> dict[str, Any]:
    services = render.compose()["services"]
    return {name: svc for name, svc in services.items() if svc.get("command", [None])[0] == "serve"}


def _check_everything_lists(render: ModuleType, specs: tuple[ServiceSpec, ...]) -> None:
    names = [s.name for s in specs]
    apps = _compose_apps(render)
    assert list(apps) == names
    for spec in specs:
        svc = apps[spec.name]
        assert svc["command"] == ["serve", spec.name]
        assert svc["environment"]["PORT"] == str(spec.port)
        assert {k: v for k, v in svc["environment"].items() if k.endswith("_URL")} == {
            "REDIS_URL": "redis://redis:6379/0",
            **_service_urls(specs),
        }
        published = [f"127.0.0.1:{spec.port}:{spec.port}"] if spec.kind == "http" else None
        assert svc.get("ports") == published

    (job,) = [j for j in render.prometheus()["scrape_configs"] if j["job_name"] == "quantum-trader"]
    assert [(c["targets"], c["labels"]) for c in job["static_configs"]] == [
        ([f"{s.name}:{s.port}"], {"service": s.name}) for s in specs
    ]

    docs = render.kubernetes()
    deployments = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert deployments == names
    assert list(services) == names
    for spec in specs:
        assert services[spec.name]["spec"]["ports"][0]["port"] == spec.port
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    urls = {k: v for k, v in config["data"].items() if k.endswith("_URL") and k != "REDIS_URL"}
    assert urls == _service_urls(specs)


def test_compose_prometheus_and_kubernetes_list_exactly_the_built_services(
    render: ModuleType,
) -> None:
    _check_everything_lists(render, BUILT_SERVICES)


def test_a_service_joins_every_file_once_the_catalogue_marks_it_built(
    render: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the renderer does on the day position-monitor, clm and rl-training are built.
    monkeypatch.setattr(render, "BUILT_SERVICES", SERVICES)
    _check_everything_lists(render, SERVICES)
    # The dashboards need no change: their service list is `label_values(up, service)`.
    golden = render.dashboards()["golden-signals.json"]
    (variable,) = golden["templating"]["list"]
    assert variable["definition"] == 'label_values(up{job="quantum-trader"}, service)'


def test_only_the_replicated_services_get_more_than_one_replica_and_a_disruption_budget(
    render: ModuleType,
) -> None:
    docs = render.kubernetes()
    budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert budgets == set(render.REPLICATED) & {s.name for s in BUILT_SERVICES}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        if name in render.REPLICATED:
            assert d["spec"]["replicas"] >= 2
            assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        else:
            # Two strategy loops, feeds or paper venues must never overlap, even in a roll-out.
            assert d["spec"]["replicas"] == 1
            assert d["spec"]["strategy"] == {"type": "Recreate"}


def test_replicas_of_a_service_with_state_share_it_through_the_config_map(
    render: ModuleType,
) -> None:
    docs = render.kubernetes()
    (config,) = [d["data"] for d in docs if d["kind"] == "ConfigMap"]
    assert {"execution", "portfolio-intelligence"} <= set(render.REPLICATED)
    for name, variable in render.SHARED_STATE.items():
        assert name in render.REPLICATED, name
        assert config[variable] == "true", variable


def test_a_state_volume_is_refused_to_a_replicated_service(
    render: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ReadWriteOnce claim is mounted by one pod at a time: a second replica (or a rolling
    update's surge pod) would wait for it forever."""
    volume = render.StateVolume(size="1Gi", settings={"X": "/var/lib/quantum-trader/x"})
    monkeypatch.setattr(render, "STATE_VOLUMES", {"execution": volume})
    with pytest.raises(
        SystemExit, match="execution: a ReadWriteOnce state volume needs a singleton"
    ):
        render.kubernetes()


def test_every_table_owner_is_a_service_of_the_catalogue() -> None:
    assert set(TABLE_OWNERS) <= {s.name for s in SERVICES}
