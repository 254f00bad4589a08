"""deploy/prometheus: promtool checks of the scrape config and the rules, promtool unit tests of the rules, and
every metric name the rules use is one the gateway (server/metrics.py) or vLLM really exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_checks import (
    DEPLOY,
    family_name,
    gateway_metric_families,
    metric_names_in,
    recording_rule_names,
    run_tool,
    unknown_metric_names,
)

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULES_UNIT_TEST = Path(__file__).with_name("alm_rules_test.yml")


def test_shipped_scrape_config_is_valid():
    result = run_tool("promtool", "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout


def test_scrape_config_with_its_rules_is_valid(tmp_path: Path):
    # The shipped config names its rules by their in-container path; point it at the repo's copy so
    # `check config` loads and checks them together, as the container will.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(config))
    result = run_tool("promtool", "check", "config", rendered)
    assert result.returncode == 0, result.stdout
    n_rules = sum(len(g["rules"]) for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"])
    assert f"SUCCESS: {n_rules} rules found" in result.stdout


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_rules_are_valid(rules_file: Path):
    result = run_tool("promtool", "check", "rules", rules_file)
    assert result.returncode == 0, result.stdout


def test_rules_unit_tests_pass():
    result = run_tool("promtool", "test", "rules", RULES_UNIT_TEST)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_can_fail(tmp_path: Path):
    # promtool really compares: a wrong expectation fails.
    wrong = RULES_UNIT_TEST.read_text().replace("value: 0.25", "value: 0.5")
    (tmp_path / "t.yml").write_text(wrong.replace("../../deploy", str(DEPLOY)))
    result = run_tool("promtool", "test", "rules", tmp_path / "t.yml")
    assert result.returncode != 0


def test_metric_name_check_catches_typos():
    assert unknown_metric_names("rate(alm_gateway_requests_total[1m]) + vllm:num_requests_waiting", set()) == set()
    assert unknown_metric_names(
        "rate(alm_gateway_request_total[1m]) + vllm:num_request_waiting + alm:nope:sum", set()
    ) == {"alm_gateway_request_total", "vllm:num_request_waiting", "alm:nope:sum"}


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_rules_use_real_metric_names(rules_file: Path):
    recorded = recording_rule_names()
    for group in yaml.safe_load(rules_file.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            assert not unknown_metric_names(rule["expr"], recorded), f"{name}: {rule['expr']}"
            if "record" in rule:
                # level:metric:operations (https://prometheus.io/docs/practices/rules/)
                assert rule["record"].startswith("alm:") and rule["record"].count(":") == 2


def test_every_gateway_metric_is_used_by_rules_or_dashboard():
    used = set()
    for rules_file in RULE_FILES:
        used |= metric_names_in(rules_file.read_text())
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        used |= metric_names_in(dashboard.read_text())
    used_families = {family_name(n) for n in used} | used
    assert not gateway_metric_families() - used_families
