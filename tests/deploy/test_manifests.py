"""Deployment files parse, agree with the port table, and probe the health endpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from backend.infra.service import PORTS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_render():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("render", DEPLOY / "k8s" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_kubernetes_manifests_are_what_render_produces() -> None:
    render = load_render()
    assert (DEPLOY / "k8s" / "services.yaml").read_text() == render.render(), (
        "run: python deploy/k8s/render.py > deploy/k8s/services.yaml"
    )


def test_every_deployment_probes_health_and_exposes_its_port() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "services.yaml").read_text()))
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert deployments
    for dep in deployments:
        name = dep["metadata"]["name"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["ports"][0]["containerPort"] == PORTS[name]
        module = name.replace("-", "_")
        assert container["command"][-1] == f"microservices/{module}/main.py"
        assert (DEPLOY.parent / "microservices" / module / "main.py").exists()
        assert services[name]["spec"]["ports"][0]["port"] == PORTS[name]


def test_compose_collector_and_prometheus_files_parse_and_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        if name in PORTS:
            module = name.replace("-", "_")
            assert svc["command"][-1] == f"microservices/{module}/main.py"
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    for pipeline in collector["service"]["pipelines"].values():
        assert set(pipeline["exporters"]) <= set(collector["exporters"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    for target in targets:
        host, port = target.split(":")
        assert PORTS[host] == int(port)
