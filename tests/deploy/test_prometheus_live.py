"""A real Prometheus (Debian's package) scrapes a real gateway and a real vLLM engine on loopback with the
SHIPPED scrape config and rules, while audio requests go through the gateway with the `openai` SDK.

Only the service-discovery targets and the intervals are rewritten (Docker DNS names → loopback addresses,
15 s → 1 s); job names, paths, relabelling and the rule files are the shipped ones. Then, through Prometheus's
HTTP API: both jobs' metrics were scraped, the recording rules (quantiles included) return values, every rule
evaluates without error, every dashboard query runs, and the HPA's adapter query finds the queue metric.
Waiting is bounded polling on Prometheus's own state, never a timed assertion.
"""

from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from openai import OpenAI

from alm.processes import free_port
from tests.deploy.deploy_checks import DEPLOY, REPO, find_tool, gateway_command
from tests.deploy.test_grafana import DASHBOARDS, load, queries

WAIT_S = 120  # upper bound for every wait below; normally each takes a few scrape intervals (1 s)
CHAT_REQUESTS = 3


def wait_for(what: str, probe: Callable[[], Any], proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `probe` until it returns a truthy value (returned) or WAIT_S passes (test fails, naming `what`)."""
    deadline = time.monotonic() + WAIT_S
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        try:
            last = probe()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{what}: not reached within {WAIT_S} s (last: {last!r})\n{log.read_text()[-3000:] if log else ''}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def gateway(engine_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway as its container runs it (`alm gateway`), pointed at the session engine."""
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALM_")}
    env |= {"ALM_ENGINE_URLS": engine_server.url, "ALM_HEALTH_INTERVAL_S": "0.5"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            gateway_command("127.0.0.1", port),
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("gateway /ready", lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, proc, log)
        yield url
    finally:
        stop(proc)


def render_config(shipped: dict, targets: dict[str, str], rules_dir: Path) -> dict:
    """The shipped config with each job's service discovery replaced by a static loopback target."""
    config = {**shipped, "global": {**shipped["global"], "scrape_interval": "1s", "scrape_timeout": "1s",
                                    "evaluation_interval": "1s"}}  # fmt: skip
    config["rule_files"] = [str(rules_dir / "*.yml")]
    jobs = []
    for job in shipped["scrape_configs"]:
        if job["job_name"] not in targets:
            pytest.fail(f"shipped scrape job {job['job_name']!r} has no loopback target in this test")
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        jobs.append({**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]})
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def prometheus(gateway: str, engine_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("prometheus")
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        "gateway": gateway.removeprefix("http://"),
        "engine": engine_server.url.removeprefix("http://"),
        "prometheus": f"127.0.0.1:{port}",
    }
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(render_config(shipped, targets, DEPLOY / "prometheus" / "rules")))
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [find_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus /-/ready", lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, proc, log)

        def all_targets_up() -> bool:
            active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return {t["labels"]["job"] for t in active if t["health"] == "up"} == set(targets)

        wait_for("every shipped job scraped successfully", all_targets_up, proc, log)
        yield url
    finally:
        stop(proc)


def query(prometheus: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def value(prometheus: str, promql: str) -> float | None:
    """The single sample's value, or None while the result is empty or not a finite number."""
    result = query(prometheus, promql)
    if len(result) != 1:
        return None
    sample = float(result[0]["value"][1])
    return sample if math.isfinite(sample) else None


def wav_base64(seconds: float = 1.0) -> str:
    t = np.arange(int(16_000 * seconds)) / 16_000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def traffic(prometheus: str, gateway: str, engine_server) -> str:
    """Audio chat completions (plain and streamed) through the gateway, after the first scrapes."""
    client = OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}},
        {"type": "text", "text": "What do you hear?"},
    ]}]  # fmt: skip
    for _ in range(CHAT_REQUESTS):
        reply = client.chat.completions.create(
            model=engine_server.model, messages=messages, max_tokens=4, temperature=0
        )
        assert reply.choices[0].message.content is not None
    stream = client.chat.completions.create(
        model=engine_server.model, messages=messages, max_tokens=4, temperature=0, stream=True
    )
    assert list(stream)
    return prometheus


def test_gateway_metrics_are_scraped(traffic: str):
    ok = 'sum(alm_gateway_requests_total{route="chat_completions",code="200"})'
    assert wait_for("gateway request counter scraped", lambda: (value(traffic, ok) or 0) >= CHAT_REQUESTS + 1)
    assert value(traffic, 'count(alm_gateway_requests_total{job="gateway"})') >= 1
    assert value(traffic, "sum(alm_gateway_input_audio_seconds_count)") >= CHAT_REQUESTS + 1


def test_engine_metrics_are_scraped(traffic: str):
    done = 'sum(vllm:request_success_total{job="engine"})'
    assert wait_for("engine request counter scraped", lambda: (value(traffic, done) or 0) >= CHAT_REQUESTS + 1)
    assert value(traffic, 'sum(vllm:num_requests_waiting{job="engine"})') is not None


@pytest.mark.parametrize(
    "recorded",
    [
        'alm:gateway_request_duration_seconds:p95_5m{route="chat_completions"}',
        "alm:gateway_time_to_first_token_seconds:p95_5m",
        "alm:engine_time_to_first_token_seconds:p95_5m",
        "alm:gateway_input_audio_seconds:rate1m",
        "alm:engine_generation_tokens:rate1m",
    ],
)
def test_recording_rules_return_values(traffic: str, recorded: str):
    sample = wait_for(f"{recorded} has a positive value", lambda: (value(traffic, recorded) or 0) > 0)
    assert sample > 0


def test_health_rules_see_the_one_engine(traffic: str):
    assert wait_for("healthy engine count", lambda: value(traffic, "alm:gateway_engines_healthy:count")) == 1
    assert value(traffic, "alm:engine_requests_waiting:sum") is not None


def test_every_rule_evaluates_cleanly_and_no_alert_fires(traffic: str):
    def evaluated_groups() -> list[dict] | None:
        groups = httpx.get(f"{traffic}/api/v1/rules", timeout=5).json()["data"]["groups"]
        # lastEvaluation stays at the zero time until a group has run once.
        return groups if all(not g["lastEvaluation"].startswith("0001") for g in groups) else None

    groups = wait_for("every rule group evaluated", evaluated_groups)
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            if rule["type"] == "alerting":
                assert rule["state"] == "inactive", f"{rule['name']} is {rule['state']} on a healthy stack"


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_runs(traffic: str, dashboard: Path):
    for _title, promql in queries(load(dashboard)):
        query(traffic, promql)  # asserts status == success
    # The core panels have data once traffic has been scraped.
    for promql in (
        "alm:gateway_engines_healthy:count",
        "sum by (instance) (vllm:num_requests_running)",
        "max by (engine) (alm_gateway_engine_in_flight_requests)",
        "max by (engine) (alm_gateway_engine_waiting_requests)",
    ):
        assert query(traffic, promql), promql


def test_hpa_adapter_query_finds_the_queue_metric(traffic: str):
    # The adapter's metricsQuery with its template filled the way the adapter fills it for one namespace.
    rule = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"][0]
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    promql = (rule["metricsQuery"].replace("<<.Series>>", series)
              .replace("<<.LabelMatchers>>", 'job="engine"').replace("<<.GroupBy>>", "instance"))  # fmt: skip
    (sample,) = query(traffic, promql)
    assert float(sample["value"][1]) >= 0
