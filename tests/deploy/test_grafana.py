"""The dashboards are valid JSON on provisioned data sources, linked by trace id both ways."""

from __future__ import annotations

import json
from typing import Any

from .conftest import DEPLOY, load_yaml

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def datasources() -> dict[str, dict[str, Any]]:
    provisioned = load_yaml("grafana/provisioning/datasources/datasources.yaml")
    return {ds["uid"]: ds for ds in provisioned["datasources"]}


def panel_datasources(board: dict[str, Any]) -> list[dict[str, str]]:
    refs = []
    for panel in board["panels"]:
        refs.append(panel["datasource"])
        refs += [t["datasource"] for t in panel.get("targets", [])]
    refs += [v["datasource"] for v in board["templating"]["list"] if "datasource" in v]
    return refs


def test_the_issue_s_dashboards_are_there() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {
        "Quantum Trader / Golden signals",
        "Quantum Trader / Tick to trade",
        "Quantum Trader / Event bus",
        "Quantum Trader / PnL and exposure",
    }


def test_every_dashboard_is_valid_json_with_unique_uid_and_panel_ids() -> None:
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert all(p.get("targets") for p in board["panels"]), f"{path.name}: a panel shows nothing"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (path.name, panel["title"])


def test_every_panel_uses_a_data_source_the_provisioning_defines() -> None:
    defined = datasources()
    for path in DASHBOARDS:
        for ref in panel_datasources(json.loads(path.read_text())):
            assert ref["uid"] in defined, f"{path.name}: unknown data source {ref}"
            assert defined[ref["uid"]]["type"] == ref["type"], f"{path.name}: {ref}"


def test_metrics_traces_and_logs_link_to_each_other_by_trace_id() -> None:
    ds = datasources()
    prometheus, tempo, loki = ds["prometheus"], ds["tempo"], ds["loki"]
    # metrics -> traces: span-metric exemplars carry trace_id.
    (exemplar,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplar == {"name": "trace_id", "datasourceUid": "tempo"}
    # traces -> logs: the span's service and the trace id select the Loki lines.
    to_logs = tempo["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki"
    assert "${__trace.traceId}" in to_logs["query"].replace("$$", "$")
    # logs -> traces: the trace_id Alloy stores as structured metadata opens the trace.
    (derived,) = loki["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "tempo"
    assert derived["matcherType"] == "label" and derived["matcherRegex"] == "trace_id"
    alloy = (DEPLOY / "alloy" / "config.alloy").read_text()
    assert "stage.structured_metadata" in alloy and "trace_id" in alloy


def test_dashboards_reach_data_sources_on_the_compose_hostnames() -> None:
    compose = load_yaml("compose.yaml")["services"]
    for ds in datasources().values():
        host = ds["url"].split("//", 1)[1].split(":", 1)[0]
        assert host in compose, f"{ds['name']} points at {host}, which compose does not run"
