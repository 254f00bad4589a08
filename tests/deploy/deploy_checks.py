"""Shared helpers for the deployment checks (Dockerfile, compose, Kubernetes, Prometheus, Grafana).

External tools (promtool, prometheus, docker-compose, shellcheck, hadolint) come from
scripts/install-test-tools.sh. A missing tool FAILS the test with that hint: CI must really run these checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# Suffixes prometheus-client and vLLM append to a metric family's name in the exposition.
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
# Recording rules follow the level:metric:operations convention, so they always contain a ':' and
# never start with "vllm:"; PromQL keywords and functions never contain one.
_METRIC_TOKEN = re.compile(r"(?<![\w:\"'])((?:alm_gateway_|vllm:)[A-Za-z0-9_:]*|alm:[A-Za-z0-9_:]+)")


def gateway_command(host: str, port: int) -> list[str]:
    """The gateway as the container's gateway role runs it (deploy/docker/entrypoint.sh execs `alm gateway`)."""
    if not re.search(r'exec alm "\$role"', (DEPLOY / "docker" / "entrypoint.sh").read_text()):
        pytest.fail("deploy/docker/entrypoint.sh does not exec `alm engine` / `alm gateway`", pytrace=False)
    from alm.gateway import gateway_argv

    return gateway_argv(host, port)


def find_tool(name: str) -> str:
    """Absolute path of an external tool on PATH or in this venv's bin/, else fail with the install hint."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(
            f"{name!r} is not installed: run `scripts/install-test-tools.sh` (as root) before the tests",
            pytrace=False,
        )
    return path


def run_tool(*args: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a tool found by find_tool(); the result carries stdout+stderr in `.stdout`."""
    cmd = [find_tool(str(args[0])), *map(str, args[1:])]
    return subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120
    )


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def metric_names_in(expr: str) -> set[str]:
    """Our and vLLM's metric names (and our recording-rule names) that a PromQL expression refers to."""
    return set(_METRIC_TOKEN.findall(expr))


def family_name(series_name: str) -> str:
    """`alm_gateway_requests_total` → `alm_gateway_requests`; `..._seconds_bucket` → `..._seconds`."""
    for suffix in _SERIES_SUFFIXES:
        if series_name.endswith(suffix):
            return series_name[: -len(suffix)]
    return series_name


@cache
def gateway_metric_families() -> frozenset[str]:
    """Every metric family the gateway defines (server/metrics.py), as exposed (counters without _total)."""
    from server.metrics import Metrics

    return frozenset(family.name for family in Metrics().registry.collect())


@cache
def vllm_metric_families() -> frozenset[str]:
    """Every `vllm:` metric family vLLM's Prometheus logger defines, read from the installed vLLM's source."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("vLLM is not installed in this environment", pytrace=False)
    metrics_dir = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics"
    names: set[str] = set()
    for source in metrics_dir.glob("*.py"):
        names.update(re.findall(r"name=\"(vllm:[a-z0-9_:]+)\"", source.read_text()))
    if "vllm:num_requests_waiting" not in names:
        pytest.fail(f"could not read vLLM's metric names from {metrics_dir}", pytrace=False)
    return frozenset(family_name(n) for n in names)


def unknown_metric_names(expr: str, recording_rules: set[str]) -> set[str]:
    """Names in `expr` that are neither a gateway family, a vLLM family nor one of `recording_rules`."""
    known = gateway_metric_families() | vllm_metric_families()
    unknown = set()
    for name in metric_names_in(expr):
        if name.startswith("alm:"):
            if name not in recording_rules:
                unknown.add(name)
        elif name not in known and family_name(name) not in known:
            unknown.add(name)
    return unknown


def recording_rule_names() -> set[str]:
    names = set()
    for rules_file in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(rules_file.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names
