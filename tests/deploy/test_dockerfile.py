"""The image: Dockerfile lint, its pins and invariants, and the entrypoint / healthcheck scripts run for real."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import tomllib

from server.launcher import free_port
from tests.deploy.deploy_checks import (
    DEPLOY,
    REPO,
    find_tool,
    gateway_factory,
    run_tool,
)

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_passes():
    result = run_tool("hadolint", "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", [ENTRYPOINT, REPO / "scripts" / "install-test-tools.sh"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script: Path):
    result = run_tool("shellcheck", "--shell=sh", script)
    assert result.returncode == 0, result.stdout


def test_base_image_is_the_pinned_vllm_of_the_gpu_extra():
    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    (vllm_pin,) = [req for req in gpu_extra if req.startswith("vllm==")]
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms == [f"vllm/vllm-openai:v{vllm_pin.removeprefix('vllm==')}"]


def test_runs_as_non_root_with_healthcheck_and_no_weights_inside():
    steps = instructions()
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "alm-healthcheck" in args for keyword, args in steps)
    copied = " ".join(args for keyword, args in steps if keyword in {"COPY", "ADD"})
    assert "models" not in copied.replace("model_plugins", "")
    # The build context is an allow-list ("*" then "!path"): weights, venvs and caches never reach the daemon,
    # and every COPY source is one of the allowed paths.
    dockerignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert [line for line in dockerignore if line and not line.startswith("#")][0] == "*"
    allowed = {line[1:].rstrip("/") for line in dockerignore if line.startswith("!")}
    for keyword, args in steps:
        if keyword == "COPY":
            for source in [arg for arg in args.split() if not arg.startswith("--")][:-1]:
                source = source.rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_package_builds_from_the_image_build_context(tmp_path: Path):
    # Exactly what the Dockerfile COPYs before `pip install .`: the wheel builds from it and registers the
    # plugin entry point that makes plain `vllm serve` load our model class.
    context = tmp_path / "context"
    context.mkdir()
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--"):
            source, _ = args.split()
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist", context],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "midashenglm = model_plugins.midashenglm:register" in archive.read(entry_points).decode()
    assert "server/app.py" in names and "model_plugins/midashenglm/__init__.py" in names


def test_scripts_are_executable():
    for script in (ENTRYPOINT, HEALTHCHECK, REPO / "scripts" / "install-test-tools.sh"):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


# --- the entrypoint, run with stand-ins for vllm / python3 that print their argv ------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("vllm", "python3"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    return bin_dir


def run_entrypoint(fake_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PORT": "8000", "ALM_SERVED_MODEL_NAME": "midashenglm-7b"}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_entrypoint_engine_role_runs_vllm_serve(fake_bin: Path, tmp_path: Path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    result = run_entrypoint(
        fake_bin, "engine", "--enforce-eager", ALM_MODEL_PATH=str(checkpoint), ALM_ENGINE_ARGS="--max-num-seqs 8"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "vllm", "serve", str(checkpoint), "--served-model-name", "midashenglm-7b",
        "--host", "0.0.0.0", "--port", "8000", "--max-num-seqs", "8", "--enforce-eager",
    ]  # fmt: skip


def test_entrypoint_engine_reads_the_shared_audio_dir(fake_bin: Path, tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    result = run_entrypoint(fake_bin, "engine", ALM_MODEL_PATH=str(tmp_path), ALM_SHARED_AUDIO_DIR="/alm-audio")
    argv = result.stdout.split()
    assert result.returncode == 0 and argv[argv.index("--allowed-local-media-path") + 1] == "/alm-audio"


def test_entrypoint_engine_without_weights_says_what_to_mount(fake_bin: Path, tmp_path: Path):
    result = run_entrypoint(fake_bin, "engine", ALM_MODEL_PATH=str(tmp_path / "absent"))
    assert result.returncode == 64
    assert "config.json missing" in result.stderr and "/models" in result.stderr
    assert result.stdout == ""


def test_entrypoint_gateway_role_runs_the_app_factory(fake_bin: Path):
    result = run_entrypoint(fake_bin, "gateway")
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    assert argv[:4] == ["python3", "-m", "uvicorn", gateway_factory()]
    assert "--factory" in argv and argv[argv.index("--port") + 1] == "8000"


def test_gateway_factory_builds_the_app_from_env(monkeypatch: pytest.MonkeyPatch):
    from fastapi import FastAPI
    from uvicorn.importer import import_from_string

    for key in [k for k in os.environ if k.startswith("ALM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ALM_ENGINE_URLS", "http://engine:8000")
    assert isinstance(import_from_string(gateway_factory())(), FastAPI)


def test_entrypoint_passes_other_commands_through(fake_bin: Path):
    result = run_entrypoint(fake_bin, "echo", "hello")
    assert (result.returncode, result.stdout) == (0, "hello\n")


# --- the healthcheck, against a real loopback server ----------------------------------------------


@pytest.mark.parametrize("status, expected_rc", [(200, 0), (503, 1)])
def test_healthcheck_follows_health_status(status: int, expected_rc: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == expected_rc


def test_healthcheck_fails_when_nothing_listens():
    env = {**os.environ, "PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_tools_resolve():
    # The tools of the whole deploy suite, checked in one place so a missing install reads clearly.
    for name in ("hadolint", "shellcheck", "promtool", "prometheus", "docker-compose"):
        assert Path(find_tool(name)).exists()
