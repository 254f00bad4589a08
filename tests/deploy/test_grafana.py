"""deploy/grafana: the dashboard parses, its PromQL parses (promtool) and names only real metrics or our
recording rules, and it points at the provisioned data source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_checks import (
    DEPLOY,
    recording_rule_names,
    run_tool,
    unknown_metric_names,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Grafana's built-in interval variables, replaced by a literal so promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every target."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, literal in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, literal)
            found.append((panel["title"], expr))
    return found


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_dashboards_exist():
    assert [p.name for p in DASHBOARDS] == ["alm-serve.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path):
    dashboard = load(path)
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    # No two panels overlap on the 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_the_provisioned_data_source(path: Path):
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"  # the compose service
    for panel in panels(load(path)):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "alm.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_name_real_metrics(path: Path):
    recorded = recording_rule_names()
    for title, expr in queries(load(path)):
        assert not unknown_metric_names(expr, recorded), f"{title}: {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_parse(path: Path, tmp_path: Path):
    # promtool parses PromQL only inside rules: wrap every query as a recording rule.
    rules = [{"record": f"dashboard:query{i}:check", "expr": expr} for i, (_, expr) in enumerate(queries(load(path)))]
    assert rules
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool("promtool", "check", "rules", rules_file)
    assert result.returncode == 0, result.stdout


def test_dashboard_covers_the_issue_panels():
    titles = " | ".join(p["title"].lower() for p in panels(load(GRAFANA / "dashboards" / "alm-serve.json")))
    for topic in (
        "requests / s",
        "time to first token",
        "latency",
        "queue depth",
        "audio seconds",
        "errors",
        "per engine",
    ):
        assert topic in titles, topic
