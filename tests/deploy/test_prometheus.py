"""promtool accepts the Prometheus configurations and rules; the alerts pass their unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from .conftest import DEPLOY, require_tool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules"
HINT = "Debian: apt-get install prometheus"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    tool = require_tool("promtool", HINT)
    result = subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def _config_with_local_rules(name: str, tmp_path: Path, *, static_discovery: bool = False) -> Path:
    """A copy of a configuration whose rule_files point at the repository's rules.

    The configurations name the rules where the container mounts them; the copy lets promtool
    load and check those very files through the configuration.
    """
    config = yaml.safe_load((PROMETHEUS / name).read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.rules.yml"]
    config["rule_files"] = [str(RULES / "*.rules.yml")]
    if static_discovery:
        # Debian's promtool is built without Kubernetes discovery; everything else (relabel
        # rules and their regexes, rule files) is checked as written.
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["pod.example:8001"]}]
    copy = tmp_path / name
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def test_the_compose_configuration_and_its_rules_pass_promtool_check_config(
    tmp_path: Path,
) -> None:
    output = promtool("check", "config", str(_config_with_local_rules("prometheus.yml", tmp_path)))
    assert "1 rule files found" in output


def test_the_kubernetes_configuration_passes_promtool_check_config(tmp_path: Path) -> None:
    config = _config_with_local_rules("prometheus.kubernetes.yml", tmp_path, static_discovery=True)
    promtool("check", "config", str(config))


def test_the_rules_pass_promtool_check_rules() -> None:
    output = promtool("check", "rules", *sorted(str(p) for p in RULES.glob("*.rules.yml")))
    assert "SUCCESS" in output


def test_the_alerts_pass_their_unit_tests() -> None:
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.test.yml"))
    assert tests
    promtool("test", "rules", *tests, cwd=PROMETHEUS / "tests")


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    alerts = {
        rule["alert"]
        for path in RULES.glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        case["alertname"]
        for path in (PROMETHEUS / "tests").glob("*.test.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set(), "alerts without a test that makes them fire"


def test_the_issue_s_alerts_are_all_there() -> None:
    text = "\n".join(p.read_text() for p in RULES.glob("*.rules.yml"))
    for needle in (
        'up{job="quantum-trader"} == 0',  # service down
        "service_ready",  # readiness failing
        "deriv(eventbus_consumer_lag_entries",  # consumer lag growing
        "eventbus_dead_lettered_total",  # dead letters
        "otel_spans_dropped_total",  # spans dropped
        'state="HALTED"',  # risk state HALTED
        "service:http_errors:ratio_rate1h > 0.072",  # availability burn, 14.4x
        "service:http_slow:ratio_rate3d > 0.01",  # latency burn, 1x
    ):
        assert needle in text, needle
