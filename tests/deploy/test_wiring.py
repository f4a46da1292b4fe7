"""Each address one component uses is where the other component listens."""

from __future__ import annotations

import re
from types import ModuleType
from urllib.parse import urlsplit

from .conftest import DEPLOY, load_yaml


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/", 1)[0])


def test_the_services_export_to_the_collector_s_otlp_grpc_receiver(render: ModuleType) -> None:
    collector = load_yaml("otel-collector.yaml")
    grpc = port_of(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    (config,) = [d for d in render.kubernetes() if d["kind"] == "ConfigMap"]
    for endpoint in (render.APP_ENVIRONMENT["OTLP_ENDPOINT"], config["data"]["OTLP_ENDPOINT"]):
        url = urlsplit(endpoint)
        assert (url.hostname, url.port) == ("otel-collector", grpc)


def test_the_collector_exports_to_tempo_s_otlp_receiver() -> None:
    collector = load_yaml("otel-collector.yaml")
    tempo = load_yaml("tempo/tempo.yaml")
    host, port = collector["exporters"]["otlp/tempo"]["endpoint"].split(":")
    assert host == "tempo"
    assert int(port) == port_of(
        tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    )


def test_prometheus_scrapes_the_collector_where_it_serves_metrics() -> None:
    collector = load_yaml("otel-collector.yaml")
    (reader,) = collector["service"]["telemetry"]["metrics"]["readers"]
    own = reader["pull"]["exporter"]["prometheus"]["port"]
    spans = port_of(collector["exporters"]["prometheus"]["endpoint"])
    for name in ("prometheus/prometheus.yml", "prometheus/prometheus.kubernetes.yml"):
        jobs = {j["job_name"]: j for j in load_yaml(name)["scrape_configs"]}
        assert jobs["otel-collector"]["static_configs"][0]["targets"] == [f"otel-collector:{own}"]
        assert jobs["spanmetrics"]["static_configs"][0]["targets"] == [f"otel-collector:{spans}"]


def test_grafana_and_alloy_reach_the_back_ends_on_their_ports() -> None:
    loki = load_yaml("loki/loki.yaml")["server"]["http_listen_port"]
    tempo = load_yaml("tempo/tempo.yaml")["server"]["http_listen_port"]
    urls = {
        ds["uid"]: ds["url"]
        for ds in load_yaml("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    }
    assert urls == {
        "prometheus": "http://prometheus:9090",
        "tempo": f"http://tempo:{tempo}",
        "loki": f"http://loki:{loki}",
    }
    alloy = (DEPLOY / "alloy" / "config.alloy").read_text()
    (push,) = re.findall(r'url\s*=\s*"([^"]+)"', alloy)
    assert push == f"http://loki:{loki}/loki/api/v1/push"


def test_alloy_ships_exactly_the_containers_compose_labels_for_it() -> None:
    alloy = (DEPLOY / "alloy" / "config.alloy").read_text()
    (label,) = re.findall(r'values\s*=\s*\["([^"]+)"\]', alloy)
    key, value = label.split("=")
    labelled = {
        name
        for name, svc in load_yaml("compose.yaml")["services"].items()
        if svc.get("labels", {}).get(key) == value
    }
    applications = {
        name
        for name, svc in load_yaml("compose.yaml")["services"].items()
        if svc.get("command", [None])[0] == "serve"
    }
    assert labelled == applications
