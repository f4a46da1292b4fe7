"""The deployment files agree with the service catalogue, parse, and probe the health endpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from backend.infra.db import TABLE_OWNERS
from backend.infra.service import BUILT_SERVICES, SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BUILT = {spec.name: spec for spec in BUILT_SERVICES}
# What compose runs besides the services: their dependencies and the telemetry back ends.
INFRASTRUCTURE = {"redis", "postgres", "jaeger", "otel-collector", "prometheus"}
NOT_SERVICE_URLS = {"REDIS_URL", "DATABASE_URL"}


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render", DEPLOY / "k8s" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def service_urls(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.endswith("_URL") and k not in NOT_SERVICE_URLS}


def test_committed_kubernetes_manifests_are_what_render_produces() -> None:
    render = load_render()
    assert (DEPLOY / "k8s" / "services.yaml").read_text() == render.render(), (
        "run: python deploy/k8s/render.py > deploy/k8s/services.yaml"
    )


def test_kubernetes_has_a_deployment_and_a_service_for_exactly_the_built_services() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "services.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert list(deployments) == list(BUILT), "one Deployment per built service, in start order"
    assert list(services) == list(BUILT)
    for name, spec in BUILT.items():
        template = deployments[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["command"] == ["quantum-trader", "serve", name]
        assert container["ports"] == [{"name": "http", "containerPort": spec.port}]
        assert {"name": "PORT", "value": str(spec.port)} in container["env"]
        assert container["startupProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(spec.port)
        assert services[name]["spec"]["ports"][0]["port"] == spec.port
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert service_urls(config["data"]) == {
        s.url_variable: f"http://{s.name}:{s.port}" for s in BUILT_SERVICES
    }


def test_compose_runs_exactly_the_built_services_on_their_ports() -> None:
    compose = load_yaml("docker-compose.yml")
    applications = {k: v for k, v in compose["services"].items() if k not in INFRASTRUCTURE}
    assert list(applications) == list(BUILT), "a compose service the catalogue lacks, or missing"
    for name, svc in applications.items():
        spec = BUILT[name]
        assert svc["command"] == ["quantum-trader", "serve", name]
        if spec.kind == "http":
            assert svc["ports"] == [f"{spec.port}:{spec.port}"]
        # The shared environment comes in through the `<<: *service` merge.
        assert service_urls(svc["environment"]) == {
            s.url_variable: f"http://{s.name}:{s.port}" for s in BUILT_SERVICES
        }


def test_compose_takes_its_secrets_from_the_environment_not_from_the_file() -> None:
    env = load_yaml("docker-compose.yml")["x-service"]["environment"]
    for variable in ("RISK_APPROVAL_SECRET", "QT_API_TOKEN"):
        assert env[variable].startswith(f"${{{variable}:?"), f"{variable} must be required"


def test_prometheus_scrapes_exactly_the_built_services() -> None:
    prometheus = load_yaml("prometheus.yml")
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{s.name}:{s.port}" for s in BUILT_SERVICES]


def test_every_table_owner_is_a_service_of_the_catalogue() -> None:
    assert set(TABLE_OWNERS) <= {s.name for s in SERVICES}


def test_the_collector_configuration_parses_and_wires_its_pipelines() -> None:
    collector = load_yaml("otel-collector.yaml")
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    for pipeline in collector["service"]["pipelines"].values():
        assert set(pipeline["exporters"]) <= set(collector["exporters"])


def test_the_image_installs_the_command_every_manifest_runs() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in ("backend", "microservices", "quantum_trader"):
        assert f"COPY {package} ./{package}" in dockerfile
