"""The engine HPA's metric end to end on paper: the HPA names the adapter's metric, the adapter's rule finds the
engines' series and its query, rendered as prometheus-adapter renders it, is the one promtool runs in
tests/deploy/alm_rules_test.yml (run by test_prometheus_static.py) — and here again against series made from the
HPA's own target, so a changed target, rule or query cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from server.config import load_settings
from tests.deploy.deploy_checks import DEPLOY, run_tool

K8S = DEPLOY / "k8s"
RULES_UNIT_TEST = Path(__file__).with_name("alm_rules_test.yml")
NAMESPACE, PODS = "alm-serve", ("alm-engine-a", "alm-engine-b")


def hpa_metric() -> tuple[str, float]:
    (metric,) = yaml.safe_load((K8S / "engine-hpa.yaml").read_text())["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    return metric["pods"]["metric"]["name"], float(metric["pods"]["target"]["averageValue"])


def adapter_rule(name: str) -> dict:
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]
    (rule,) = [r for r in rules["custom"] if r["name"]["as"] == name]
    return rule


def rendered_query(rule: dict) -> str:
    """metricsQuery as prometheus-adapter fills it for a pods metric of one namespace (its Go template)."""
    series = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{.*\}", rule["seriesQuery"].strip("'")).group(1)
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(PODS)}"'
    query = rule["metricsQuery"]
    for placeholder, value in (("<<.Series>>", series), ("<<.LabelMatchers>>", matchers), ("<<.GroupBy>>", "pod")):
        query = query.replace(placeholder, value)
    assert "<<" not in query, query
    return query


def test_the_hpa_metric_is_the_engines_queue_through_the_adapter():
    name, _ = hpa_metric()
    rule = adapter_rule(name)
    assert re.search(rule["name"]["matches"], "vllm:num_requests_waiting")
    assert rule["seriesQuery"].startswith("vllm:num_requests_waiting{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_rules_unit_test_runs_the_adapters_query():
    query = rendered_query(adapter_rule(hpa_metric()[0]))
    exprs = [
        case["expr"]
        for test in yaml.safe_load(RULES_UNIT_TEST.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
    ]
    assert query in exprs


def test_the_hpa_target_is_reachable_with_the_default_engine_queue():
    """Engines hold at most ALM_ENGINE_MAX_WAITING queued requests (the gateways keep the rest): a target at or
    above it would never be exceeded."""
    assert hpa_metric()[1] < load_settings(engine_urls=["http://e:1"]).engine_max_waiting


def test_the_adapters_query_returns_an_overloaded_engines_queue(tmp_path: Path):
    name, target = hpa_metric()
    query = rendered_query(adapter_rule(name))
    over = (
        int(target) + 3
    )  # what an overloaded engine reports (the real one: tests/server/routing/test_scaling_engine.py)
    case = {
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'vllm:num_requests_waiting{{namespace="{NAMESPACE}",pod="{PODS[0]}",engine="0",'
                           'model_name="m"}', "values": f"0 {over} {over}"},
                {"series": f'vllm:num_requests_waiting{{namespace="{NAMESPACE}",pod="{PODS[1]}",engine="0",'
                           'model_name="m"}', "values": f"0 {over + 2} {over + 2}"},
                {"series": 'vllm:num_requests_waiting{namespace="elsewhere",pod="x",engine="0",model_name="m"}',
                 "values": "50 50 50"},
            ],
            "promql_expr_test": [
                {"expr": query, "eval_time": "2m", "exp_samples": [
                    {"labels": f'{{pod="{PODS[0]}"}}', "value": over},
                    {"labels": f'{{pod="{PODS[1]}"}}', "value": over + 2},
                ]},
                # The HPA's value is the mean over the pods: above the target, so it scales up.
                {"expr": f"avg({query}) > {target}", "eval_time": "2m",
                 "exp_samples": [{"labels": "{}", "value": over + 1}]},
                {"expr": f"avg({query}) > {target}", "eval_time": "0m", "exp_samples": []},
                # The rule's seriesQuery discovers the pods' series (not compose's, which carry no pod label).
                {"expr": f"count({adapter_rule(name)['seriesQuery']})", "eval_time": "2m",
                 "exp_samples": [{"labels": "{}", "value": 3}]},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "adapter_test.yml"
    path.write_text(yaml.safe_dump(case))
    result = run_tool("promtool", "test", "rules", path)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
