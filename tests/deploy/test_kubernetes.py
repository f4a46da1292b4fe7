"""Every overlay renders with kustomize, and every manifest validates against the API schemas."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.infra.service import BUILT_SERVICES

from .conftest import DEPLOY, require_tool

OVERLAYS = ("dev", "prod", "prod-ray")
# Applied next to an overlay where the Prometheus Operator runs.
MONITORING = "../monitoring"
# The Kubernetes release whose schemas the manifests must satisfy (the oldest we support).
KUBERNETES_VERSION = "1.30.0"
# Custom resources, whose schemas come with their operator, are checked field by field below.
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
BUILT = {s.name: s for s in BUILT_SERVICES}

_rendered: dict[str, list[dict[str, Any]]] = {}


def kustomize(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        kubectl = require_tool("kubectl", "kubectl >= 1.27 has kustomize built in")
        result = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
        _rendered[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[overlay]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", [*OVERLAYS, MONITORING])
def test_every_manifest_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    import kubernetes_validate

    checked = 0
    for doc in kustomize(overlay):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        # strict: a misspelt or misplaced field is an error, not silently ignored.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= (1 if overlay == MONITORING else 2 * len(BUILT) + 3)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_built_service_runs_hardened_and_probed_on_its_catalogue_port(overlay: str) -> None:
    docs = kustomize(overlay)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(BUILT)
    for name, spec in BUILT.items():
        pod = deployments[name]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        (port,) = container["ports"]
        assert port["containerPort"] == spec.port
        assert port["name"] == ("http" if spec.kind == "http" else "health")
        for probe, path in (
            ("startupProbe", "/health/live"),
            ("livenessProbe", "/health/live"),
            ("readinessProbe", "/health/ready"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}
        assert pod["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.port),
            "prometheus.io/path": "/metrics",
        }
        assert container["command"] == ["quantum-trader", "serve", name]
        assert {"configMapRef": {"name": "quantum-trader"}} in container["envFrom"]
        assert {"secretRef": {"name": "quantum-trader"}} in container["envFrom"]
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"}
        assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] != 0
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        # Secrets come from the Secret, never spelt out in the manifest.
        assert not [e for e in container["env"] if "SECRET" in e["name"] or "TOKEN" in e["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_job_runs_db_upgrade_with_the_services_config(overlay: str) -> None:
    job = by_kind(kustomize(overlay), "Job")["quantum-trader-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["quantum-trader", "db", "upgrade"]
    assert {"secretRef": {"name": "quantum-trader"}} in container["envFrom"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    deployments = by_kind(kustomize(overlay), "Deployment")
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments.values()}
    assert images == {container["image"]}, "the Job migrates with the image the services run"


def test_prod_pulls_a_pinned_image_and_sets_a_restricted_namespace() -> None:
    docs = kustomize("prod")
    (namespace,) = by_kind(docs, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]
    for deployment in by_kind(docs, "Deployment").values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    config = by_kind(docs, "ConfigMap")["quantum-trader"]["data"]
    assert config["ENVIRONMENT"] == "production"
    assert "OTLP_ENDPOINT" in config
    assert not [k for k in config if "SECRET" in k or "TOKEN" in k or k == "DATABASE_URL"]


def test_the_disruption_budgets_select_the_pods_of_their_deployment() -> None:
    docs = kustomize("prod")
    deployments = by_kind(docs, "Deployment")
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert budgets, "at least one replicated service has a budget"
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert deployments[name]["spec"]["replicas"] > budget["spec"]["minAvailable"]


def test_the_ray_overlay_adds_a_hardened_raycluster_and_points_rl_training_at_it() -> None:
    docs = kustomize("prod-ray")
    (cluster,) = [d for d in docs if (d["apiVersion"], d["kind"]) in CUSTOM_KINDS]
    spec = cluster["spec"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            assert container["image"].startswith("rayproject/ray:" + spec["rayVersion"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"requests", "limits"} <= set(container["resources"])
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    config = by_kind(docs, "ConfigMap")["quantum-trader"]["data"]
    assert config["RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    assert cluster["metadata"]["namespace"] == by_kind(docs, "Namespace").popitem()[0]
    # Everything else is exactly prod.
    rest = [d for d in docs if d is not cluster and d["kind"] != "ConfigMap"]
    assert rest == [d for d in kustomize("prod") if d["kind"] != "ConfigMap"]


def test_the_pod_monitor_scrapes_every_service_pod_as_job_quantum_trader() -> None:
    monitoring = kustomize(MONITORING)
    (monitor,) = by_kind(monitoring, "PodMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    for deployment in by_kind(kustomize("prod"), "Deployment").values():
        pod = deployment["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        (port,) = container["ports"]
        endpoint = endpoints[port["name"]]
        assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        assert relabel["job"]["replacement"] == "quantum-trader", "the rules select this job"
        assert relabel["service"]["sourceLabels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_name"
        ]


def test_the_prometheus_rule_and_dashboards_are_the_committed_ones() -> None:
    monitoring = kustomize(MONITORING)
    (rule,) = by_kind(monitoring, "PrometheusRule").values()
    rules_file = DEPLOY / "prometheus" / "rules" / "quantum-trader.rules.yml"
    assert rule["spec"] == yaml.safe_load(rules_file.read_text())
    (dashboards,) = [
        d
        for d in by_kind(monitoring, "ConfigMap").values()
        if "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert dashboards["data"] == {
        p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")
    }


def _images(node: Any) -> list[str]:
    """Every `image` value anywhere in a manifest."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [image for value in node.values() for image in _images(value)]
    if isinstance(node, list):
        return [image for item in node for image in _images(item)]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_to_an_exact_version(overlay: str) -> None:
    images = [image for doc in kustomize(overlay) for image in _images(doc)]
    assert images
    for image in images:
        assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+){1,2}[\w.-]*(@sha256:[0-9a-f]{64})?", image), (
            f"{image} is not pinned to an exact version"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_risk_safety_keeps_its_state_journal_on_a_claim_that_outlives_the_pod(overlay: str) -> None:
    """A halt the database refused lives in the journal until the database takes it; on the
    pod's emptyDir a new pod (a node drained, a roll-out) started without it."""
    from microservices.risk_safety.settings import RiskSafetySettings

    docs = kustomize(overlay)
    deployment = by_kind(docs, "Deployment")["risk-safety"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    journal = env["RISK_STATE_JOURNAL"]
    # The variable is the one risk-safety reads.
    assert RiskSafetySettings(RISK_STATE_JOURNAL=journal).state_journal == Path(journal)
    (mount,) = [m for m in container["volumeMounts"] if journal.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = by_kind(docs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One pod at a time mounts a ReadWriteOnce claim: the old pod goes before the new one comes.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # fsGroup makes the claim writable by the service's non-root user.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
