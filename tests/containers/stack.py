"""The real container stack of tests/containers: Podman's Docker-compatible socket, the CPU image built from the
repository's Dockerfile, and docker-compose (1.29, Debian's) driving docker-compose.yml against that socket.

Everything the stack creates carries its compose project label, so `leftovers()` can prove `down` removed it.
Runtime set-up (packages, /etc/containers/containers.conf): scripts/install-test-tools.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE_IMAGE = "localhost/debian:bookworm"
IMAGE = "localhost/alm-serve:cpu-test"
PROMETHEUS_IMAGE = "localhost/alm-test-prometheus:latest"
SERVED_MODEL = "tiny-midashenglm"
COMPOSE_FILES = (REPO / "docker-compose.yml", HERE / "compose.test.yml")
ENGINE_START_TIMEOUT_S = 420.0


def tool(name: str) -> str:
    """Absolute path of a runtime tool, else FAIL (never skip) with the install hint."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name!r} is not installed: run `scripts/install-test-tools.sh` (as root)", pytrace=False)
    return path


def run(
    *cmd: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; stdout+stderr in ``.stdout`` (appended to ``log`` too); a failure names the command."""
    argv = [str(c) for c in cmd]
    result = subprocess.run(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if log is not None:
        with open(log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n{result.stdout}\n")
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout[-4000:]}")
    return result


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took, fails the test naming ``what``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if predicate():
                return time.monotonic() - start
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError):
            pass
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}", pytrace=False)


class PodmanService:
    """`podman system service` on a private socket, for docker-compose (DOCKER_HOST)."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self._log = open(log_path, "ab")  # noqa: SIM115 — the service outlives __init__; stop() closes it
        self.proc = subprocess.Popen(
            [tool("podman"), "system", "service", "--time=0", f"unix://{socket_path}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://podman") as client:
            wait_for(lambda: client.get("/_ping").status_code == 200, 30, "podman's API socket")

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def build_images(log: Path) -> dict[str, float]:
    """The local Debian base, the wheelhouse, the CPU image and the test Prometheus; seconds per step."""
    timings = {}
    steps = {
        "base image": [REPO / "scripts" / "make-base-image.sh"],
        "wheelhouse": [REPO / "scripts" / "wheelhouse.sh"],
        "cpu image": [tool("podman"), "build", "--target", "cpu", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                      "-t", IMAGE, REPO],
        "prometheus image": [tool("podman"), "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                             "-f", HERE / "prometheus.Dockerfile", "-t", PROMETHEUS_IMAGE, HERE],
    }  # fmt: skip
    for name, cmd in steps.items():
        start = time.monotonic()
        run(*cmd, timeout=1800, log=log)
        timings[name] = time.monotonic() - start
    return timings


@dataclass
class Stack:
    """One compose project (unique name per run) of the CPU image on the tiny checkpoint."""

    project: str
    docker_host: str
    model_dir: Path
    log: Path
    extra_files: tuple[Path, ...] = ()
    """Compose files merged after COMPOSE_FILES (bench/containers: its CPU-placement override)."""
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ALM_", "COMPOSE_", "DOCKER_"))}
        self.env = {
            **clean,
            "DOCKER_HOST": self.docker_host,
            "COMPOSE_PROJECT_NAME": self.project,
            "ALM_IMAGE": IMAGE,
            "ALM_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
            "ALM_MODEL_DIR": str(self.model_dir),
            "ALM_CPU_KVCACHE_GIB": "1",
            "ALM_AUDIO_TMPFS_OPTIONS": "mode=1777",  # what Podman accepts (docker-compose.yml, volumes)
            # Loopback only, a free port per replica (`docker-compose port --index N` tells which).
            "ALM_GATEWAY_PORT": "127.0.0.1:",
            "ALM_PROMETHEUS_PORT": "127.0.0.1:",
        }

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for f in (*COMPOSE_FILES, *self.extra_files) for arg in ("-f", str(f))]
        return run(
            tool("docker-compose"),
            "--project-directory",
            REPO,
            *files,
            *args,
            env=self.env,
            timeout=timeout,
            check=check,
            log=self.log,
        )

    def up(self, engines: int, gateways: int) -> None:
        # One service per call with --no-deps: the compose file gates start-up on healthchecks, which Podman
        # runs only under systemd, so compose would wait forever; readiness is polled from the outside instead.
        for service, replicas in (("engine", engines), ("gateway", gateways), ("prometheus", 1)):
            self.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={replicas}", service)

    def containers(self, service: str, *, running: bool = True) -> list[str]:
        args = ["ps", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={service}"]  # fmt: skip
        if not running:
            args.insert(1, "-a")
        return sorted(run(tool("podman"), *args).stdout.split())

    def url(self, container: str, port: int = 8000) -> str:
        """The loopback URL a container's published port answers on."""
        (binding,) = run(tool("podman"), "port", container, f"{port}/tcp").stdout.split()
        return f"http://{binding}"

    def gateway_urls(self) -> list[str]:
        return [self.url(name) for name in self.containers("gateway")]

    def prometheus_url(self) -> str:
        (name,) = self.containers("prometheus")
        return self.url(name, 9090)

    def engine_get(self, container: str, path: str) -> str:
        """GET on an engine inside its own container (engines publish no port; nothing leaves the host)."""
        code = (
            "import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=5).read().decode())"
        )
        return run(tool("podman"), "exec", container, "python3", "-c", code, timeout=30).stdout

    def engine_requests(self, container: str) -> float:
        """vllm:request_success_total of one engine, summed over finish reasons."""
        total = 0.0
        for line in self.engine_get(container, "/metrics").splitlines():
            if line.startswith("vllm:request_success_total"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def engine_ready(self, container: str) -> bool:
        try:
            return SERVED_MODEL in self.engine_get(container, "/v1/models")
        except RuntimeError:
            return False

    def healthy_engines(self, gateway_url: str) -> int:
        """Engines a gateway counts healthy (its alm_gateway_engine_healthy gauge)."""
        text = httpx.get(f"{gateway_url}/metrics", timeout=5).text
        return sum(
            1
            for line in text.splitlines()
            if line.startswith("alm_gateway_engine_healthy{") and line.rsplit(" ", 1)[1] == "1.0"
        )

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False, timeout=60).stdout

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=300)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {
            "containers": run(tool("podman"), "ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout,
            "networks": run(tool("podman"), "network", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
            "volumes": run(tool("podman"), "volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
        }
        return {kind: names.split() for kind, names in found.items() if names.split()}


def image_size_bytes(image: str) -> int:
    return int(json.loads(run(tool("podman"), "image", "inspect", image).stdout)[0]["Size"])
