"""docker-compose.yml (CPU flavour) and docker-compose.gpu.yml (merged over it for GPUs): validated by
`docker-compose config` (the compose-spec schema and interpolation), then the resolved files checked for what makes
the stack work: image flavours, DNS discovery, health-gated start, scraping. tests/containers runs the CPU stack."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_checks import DEPLOY, REPO, run_tool

ENV_FILE = DEPLOY / "alm.env"


def compose_env(**overrides: str) -> dict[str, str]:
    """A clean environment: no ALM_* from the caller's shell leaks into interpolation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALM_", "COMPOSE_"))}
    return {**env, **overrides}


@cache
def resolved(replicas: str | None = None, gpu: bool = False) -> dict:
    env = compose_env(**({"ALM_ENGINE_REPLICAS": replicas} if replicas else {}))
    files = ["-f", REPO / "docker-compose.yml"] + (["-f", REPO / "docker-compose.gpu.yml"] if gpu else [])
    result = run_tool("docker-compose", "--project-directory", REPO, *files, "config", env=env)
    assert result.returncode == 0, result.stdout
    return yaml.safe_load(result.stdout)


def env_file_values() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def bind_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target → (source, read_only) for a service's bind mounts, short or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            if source.startswith(("/", ".")):  # else a named volume
                mounts[target] = (source, mode == ["ro"])
        elif volume.get("type") == "bind":
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


def test_compose_file_is_valid():
    result = run_tool("docker-compose", "-f", REPO / "docker-compose.yml", "config", "--quiet", env=compose_env())
    assert result.returncode == 0, result.stdout


def test_invalid_compose_file_is_rejected(tmp_path):
    # The validator is live: a misspelt key fails.
    broken = (REPO / "docker-compose.yml").read_text().replace("    healthcheck:\n", "    healthchek:\n", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    (tmp_path / "deploy").symlink_to(DEPLOY)
    result = run_tool("docker-compose", "-f", tmp_path / "docker-compose.yml", "config", "--quiet", env=compose_env())
    assert result.returncode != 0 and "healthchek" in result.stdout


def test_engines_scale():
    assert resolved()["services"]["engine"]["deploy"]["replicas"] == 1
    assert resolved("3")["services"]["engine"]["deploy"]["replicas"] == 3
    assert resolved("3", gpu=True)["services"]["engine"]["deploy"]["replicas"] == 3
    # Engines are reached on the compose network only; a scaled service cannot publish one fixed port.
    assert "ports" not in resolved()["services"]["engine"]


def test_cpu_flavour_by_default_gpu_flavour_with_the_gpu_file():
    for role in ("engine", "gateway"):
        cpu, gpu = resolved()["services"][role], resolved(gpu=True)["services"][role]
        assert cpu["build"]["target"] == "cpu" and gpu["build"]["target"] == "gpu"
        assert cpu["build"]["args"]["BASE_IMAGE"] == "debian:bookworm-slim"
        assert cpu["image"] == "alm-serve:cpu" and gpu["image"] == "alm-serve:gpu"
    assert resolved(gpu=True)["services"]["engine"]["environment"]["ALM_GPU_MEMORY_UTILIZATION"] == "0.9"
    # Only the GPU file reserves a GPU: Docker refuses an nvidia request on a host without the toolkit.
    assert "resources" not in resolved()["services"]["engine"]["deploy"]
    (device,) = resolved(gpu=True)["services"]["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert resolved()["services"]["engine"]["environment"]["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_weights_are_mounted_read_only():
    assert bind_mounts(resolved()["services"]["engine"]) == {"/models": (str(REPO / "models"), True)}
    assert env_file_values()["ALM_MODEL_PATH"].startswith("/models/")


def test_start_order_is_health_gated():
    services = resolved()["services"]
    assert services["gateway"]["depends_on"] == {"engine": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    for role in ("engine", "gateway"):
        assert services[role]["healthcheck"]["test"][-1] == "/usr/local/bin/alm-healthcheck"
        assert services[role]["command"] == [role]
        assert services[role]["image"] == services["engine"]["image"]


def test_gateway_discovers_every_engine_replica_by_service_name():
    gateway_env = resolved()["services"]["gateway"]["environment"]
    assert gateway_env["ALM_ENGINE_URLS"] == "http://engine:8000"
    assert gateway_env["ALM_ENGINE_DNS_EXPAND"] == "true"
    (port,) = resolved()["services"]["gateway"]["ports"]
    assert int(port["target"]) == 8000


def test_prometheus_scrapes_the_compose_services():
    services = resolved()["services"]
    mounts = {target: source for target, (source, _) in bind_mounts(services["prometheus"]).items()}
    config = yaml.safe_load(Path(mounts["/etc/prometheus/prometheus.yml"]).read_text())
    sd_targets = {
        job["job_name"]: (sd["names"], sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
    }
    assert sd_targets == {"gateway": (["gateway"], 8000), "engine": (["engine"], 8000)}
    assert set(sd_targets) <= set(services)
    assert (REPO / "deploy/prometheus/rules").samefile(mounts["/etc/prometheus/rules"])


def test_grafana_is_optional_and_provisioned():
    services = resolved()["services"]
    assert services["grafana"]["profiles"] == ["grafana"]  # started only with --profile grafana
    assert all("profiles" not in services[name] for name in ("engine", "gateway", "prometheus"))
    mounts = bind_mounts(services["grafana"])
    assert (DEPLOY / "grafana/provisioning").samefile(mounts["/etc/grafana/provisioning"][0])
    assert (DEPLOY / "grafana/dashboards").samefile(mounts["/var/lib/grafana/dashboards"][0])
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana/dashboards" / home.removeprefix("/var/lib/grafana/dashboards/")).is_file()


def test_env_file_keys_are_real_settings():
    from alm.engine import EngineSettings
    from server.config import Settings

    gateway_keys = {f"ALM_{name.upper()}" for name in Settings.model_fields}
    engine_keys = {f"ALM_{name.upper()}" for name in EngineSettings.model_fields}
    unknown = set(env_file_values()) - gateway_keys - engine_keys
    assert not unknown, f"deploy/alm.env sets keys nothing reads: {sorted(unknown)}"


def test_env_file_loads_into_gateway_settings(monkeypatch: pytest.MonkeyPatch):
    from server.config import load_settings

    for key in [k for k in os.environ if k.startswith("ALM_")]:
        monkeypatch.delenv(key)
    for key, value in env_file_values().items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.engine_urls == ["http://engine:8000"] and settings.engine_dns_expand
    assert settings.api_keys == []


def test_gateway_hands_clips_to_engines_through_a_shared_tmpfs_volume():
    config = resolved()
    for name in ("engine", "gateway"):
        assert "alm-audio:/alm-audio:rw" in config["services"][name]["volumes"]
    assert config["volumes"]["alm-audio"]["driver_opts"]["type"] == "tmpfs"
    assert env_file_values()["ALM_SHARED_AUDIO_DIR"] == "/alm-audio"
