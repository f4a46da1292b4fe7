"""Every metric the dashboards and alert rules query is one the running services export.

The built services are started for real (`quantum-trader serve <name>`, one process each, on
free ports, against the test Redis under a key prefix of their own and SQLite files), and
their `/metrics` is scraped. A metric renamed in the code (say, the HTTP metrics moving to
OpenTelemetry's semantic-convention names) fails this test until the dashboards and rules
follow.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from backend.infra.service import BUILT_SERVICES
from tests.support.procs import Proc, free_port, wait_ready
from tests.support.redis import delete_prefixed, new_prefix

from .conftest import DEPLOY, ROOT

# Metrics that come from elsewhere than the services, each with where it comes from. The
# Collector's are those of the image compose.yaml pins (otelcol-contrib 0.136.0).
EXTERNAL = {
    "up": "Prometheus, per scrape target",
    "traces_span_metrics_duration_seconds_bucket": "Collector, spanmetrics connector",
    "traces_span_metrics_calls_total": "Collector, spanmetrics connector",
    "otelcol_exporter_send_failed_spans_total": "Collector, its own telemetry",
    "otelcol_receiver_refused_spans_total": "Collector, its own telemetry",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le",
}  # fmt: skip


@pytest.fixture(scope="module")
def scrapes(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`/metrics` of every built service, started as its own process, once it is ready."""
    tmp = tmp_path_factory.mktemp("live-metrics")
    prefix = new_prefix()
    ports = {spec.name: free_port() for spec in BUILT_SERVICES}
    common = {
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": prefix,
        "QT_API_TOKEN": secrets.token_urlsafe(24),
        "RISK_APPROVAL_SECRET": secrets.token_urlsafe(32),
        "HOST": "127.0.0.1",
        **{spec.url_variable: f"http://127.0.0.1:{ports[spec.name]}" for spec in BUILT_SERVICES},
    }
    with ExitStack() as stack:
        # Callbacks run last-in first-out: the processes stop before their keys go.
        stack.callback(delete_prefixed, redis_url, prefix)
        procs: dict[str, Proc] = {}
        for spec in BUILT_SERVICES:
            env = {
                **common,
                "PORT": str(ports[spec.name]),
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / spec.name}.db",
            }
            proc = Proc(["-m", "quantum_trader", "serve", spec.name], env, tmp / f"{spec.name}.log")
            stack.callback(proc.stop)
            procs[spec.name] = proc
        for name, proc in procs.items():
            wait_ready(proc, ports[name], "/health/ready", 90.0, name=name, with_output=True)
        result = {}
        for name, port in ports.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                result[name] = reply.read().decode()
        # The container health check, against a live service and against a closed port.
        healthcheck = [sys.executable, str(DEPLOY / "healthcheck.py")]
        first = BUILT_SERVICES[0].name
        for port, expected in ((ports[first], 0), (free_port(), 1)):
            run = subprocess.run(
                healthcheck, env={"PORT": str(port)}, capture_output=True, timeout=10, cwd=ROOT
            )
            assert run.returncode == expected, run.stderr
        yield result


def sample_names(exposition: str) -> set[str]:
    """Every series name a scrape can hold: each family with its type's suffixes."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (labels, functions and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?!\w)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def labels_used(expr: str) -> dict[str, set[str]]:
    """The label names an expression expects on each metric: its matchers, and the labels of
    the `by (...)` clauses around it (attributed to every metric of the expression)."""
    used: dict[str, set[str]] = {name: set() for name in metric_names(expr)}
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        if name in used:
            used[name] |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    grouped = {
        label.strip()
        for labels in re.findall(r"\bby\s*\(([^)]*)\)", expr)
        for label in labels.split(",")
        if label.strip()
    }
    for labels in used.values():
        labels |= grouped
    return used


def sample_labels(exposition: str) -> dict[str, set[str]]:
    """The label names each series name carries in a scrape (only names with samples)."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def queries() -> list[tuple[str, str]]:
    """Every PromQL expression of the rules and dashboards, with where it is."""
    found = [(rule["expr"], f"rule {rule.get('alert') or rule.get('record')}") for rule in rules()]
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["datasource"]["type"] == "prometheus":
                found += [(t["expr"], f"{path.name}: {panel['title']}") for t in panel["targets"]]
    return found


def rules() -> list[dict[str, str]]:
    return [
        rule
        for path in (DEPLOY / "prometheus" / "rules").glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def queried() -> dict[str, set[str]]:
    """Each metric name the dashboards and rules use, with where it is used."""
    uses: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            uses.setdefault(name, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            if panel["datasource"]["type"] != "prometheus":
                continue
            for target in panel["targets"]:
                for name in metric_names(target["expr"]):
                    uses.setdefault(name, set()).add(f"{path.name}: {panel['title']}")
    return uses


def test_the_promql_reader_finds_the_metrics_and_only_them() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, service) (rate(http_request_duration_seconds_bucket"
        '{service=~"$service", le="0.25"}[$__rate_interval]))) / on(service) group_left '
        "up offset 5m and service:http_errors:ratio_rate5m > 1e-3"
    )
    assert metric_names(expr) == {
        "http_request_duration_seconds_bucket",
        "up",
        "service:http_errors:ratio_rate5m",
    }


def test_every_metric_of_the_dashboards_and_rules_is_exported_by_a_running_service(
    scrapes: dict[str, str],
) -> None:
    exported = set().union(*(sample_names(text) for text in scrapes.values()))
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    uses = queried()
    assert len(uses) > 40, "the reader found too few metrics to be reading the queries"
    missing = {
        name: sorted(where)
        for name, where in uses.items()
        if name not in exported and name not in recorded and name not in EXTERNAL
    }
    assert not missing, "queried but exported by no service:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items())
    )


def test_every_label_the_queries_use_is_on_the_series_the_services_export(
    scrapes: dict[str, str],
) -> None:
    # Labels Prometheus adds to every scraped series (compose's static labels, Kubernetes
    # relabelling), and the ones only a histogram bucket has.
    target = {"job", "instance", "service", "namespace", "pod"}
    exported: dict[str, set[str]] = {}
    for text in scrapes.values():
        for name, labels in sample_labels(text).items():
            exported.setdefault(name, set()).update(labels)
    wrong = []
    for expr, where in queries():
        for name, labels in labels_used(expr).items():
            # A series with no sample yet (a counter never incremented) shows no labels.
            if name in exported and not labels <= exported[name] | target:
                wrong.append(f"{where}: {name} has no {sorted(labels - exported[name] - target)}")
    assert not wrong, "\n".join(wrong)


def test_the_label_reader_finds_matchers_and_groupings() -> None:
    expr = 'sum by (stream, group) (rate(eventbus_failed_total{service=~"$s", x!="1"}[5m]))'
    assert labels_used(expr) == {"eventbus_failed_total": {"stream", "group", "service", "x"}}


def test_each_trading_metric_comes_from_the_service_that_should_export_it(
    scrapes: dict[str, str],
) -> None:
    owners = {
        "bot_tick_to_order_seconds_bucket": "trading-bot",
        "risk_trading_state": "risk-safety",
        "execution_order_to_fill_seconds_bucket": "execution",
        "portfolio_equity": "portfolio-intelligence",
        "feed_lag_seconds_bucket": "eventbus-bridge",
        "ai_prediction_latency_seconds_bucket": "ai-engine",
    }
    for metric, service in owners.items():
        assert metric in sample_names(scrapes[service]), f"{service} does not export {metric}"


def test_every_service_exports_what_the_golden_signals_and_alerts_need(
    scrapes: dict[str, str],
) -> None:
    common = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "service_ready",
        "otel_spans_dropped_total",
        "process_cpu_seconds_total",
        "eventbus_consumer_lag_entries",
    }
    for name, text in scrapes.items():
        assert common <= sample_names(text), f"{name} lacks {common - sample_names(text)}"


def test_the_external_metrics_are_few_and_each_accounted_for() -> None:
    uses = queried()
    assert set(EXTERNAL) <= set(uses), f"listed but unused: {set(EXTERNAL) - set(uses)}"
    assert all(
        name == "up" or name.startswith(("otelcol_", "traces_span_metrics_")) for name in EXTERNAL
    )
