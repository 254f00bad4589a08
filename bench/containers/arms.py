"""The two arms of bench/containers: `alm serve` on the host and the compose stack of tests/containers, each one
engine + one gateway on the same checkpoint and the same ``ALM_*`` settings, started, inspected and stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from alm.placement import CpuPlan
from alm.processes import free_port, stop_process
from tests.containers.stack import (
    COMPOSE_FILES,
    ENGINE_START_TIMEOUT_S,
    REPO,
    SERVED_MODEL,
    Stack,
    run,
    tool,
    wait_for,
)

HERE = Path(__file__).resolve().parent
KVCACHE_GIB = "1"  # what tests/containers gives each engine (Stack: ALM_CPU_KVCACHE_GIB)
CONTAINER_ONLY = {
    # Where things are inside the containers, or how the gateway finds engines there: `alm serve` sets its own.
    "ALM_MODEL_PATH",
    "ALM_SERVED_MODEL_NAME",
    "ALM_ENGINE_URLS",
    "ALM_ENGINE_DNS_EXPAND",
    "ALM_SHARED_AUDIO_DIR",
}


def shared_settings() -> dict[str, str]:
    """The ``ALM_*`` settings the containers get (deploy/alm.env, then tests/containers/compose.test.yml's
    per-service environment), less what only means something inside a container: the host arm gets the same."""
    settings: dict[str, str] = {}
    for line in (REPO / "deploy" / "alm.env").read_text().splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and not key.startswith("#"):
            settings[key] = value
    for compose_file in COMPOSE_FILES[1:]:
        for service in yaml.safe_load(compose_file.read_text())["services"].values():
            settings.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    return {k: v for k, v in settings.items() if k.startswith("ALM_") and k not in CONTAINER_ONLY}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def affinity(procs: list[psutil.Process]) -> str:
    """The CPU sets of ``procs`` (their main threads), e.g. ``{0}`` or ``{0,1}``."""
    sets = sorted({",".join(map(str, sorted(p.cpu_affinity()))) for p in procs})
    return " / ".join(f"{{{s}}}" for s in sets)


@dataclass
class HostArm:
    """``alm serve --model CKPT`` (one engine + the gateway, placed by alm/placement.py), output in ``log``."""

    proc: subprocess.Popen
    url: str
    log: Path
    ready_s: float

    @classmethod
    def start(cls, model: Path, work: Path) -> HostArm:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALM_", "VLLM_"))}
        env.update(shared_settings())
        env.update(XDG_CACHE_HOME=str(work / "host-cache"), VLLM_CPU_KVCACHE_SPACE=KVCACHE_GIB)
        env["ALM_GRACEFUL_SHUTDOWN_S"] = "5"
        log = work / "alm-serve.log"
        argv = [sys.executable, "-m", "alm", "serve", "--model", str(model), "--served-model-name", SERVED_MODEL,
                "--port", str(port)]  # fmt: skip
        start = time.monotonic()
        with open(log, "wb") as out:  # a file, not a pipe: the gateway inherits this output and must never block
            # All cores: alm serve plans placement from its own affinity (the load generator pins itself later).
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1)),
            )
        arm = cls(proc, f"http://127.0.0.1:{port}", log, 0.0)
        while "alm: serving" not in log.read_text():
            if proc.poll() is not None or time.monotonic() - start > ENGINE_START_TIMEOUT_S:
                arm.stop()
                sys.exit(f"alm serve did not come up; see {log}")
            time.sleep(0.2)
        arm.ready_s = time.monotonic() - start
        return arm

    def processes(self) -> dict[str, list[psutil.Process]]:
        children = tree(self.proc.pid)[1:]
        gateway = [p for p in children if "gateway" in p.cmdline()]
        return {"engine": [p for p in children if p not in gateway], "gateway": gateway}

    def stop(self) -> None:
        """SIGTERM (alm serve drains and stops its children), then whatever is left of them is killed."""
        children = tree(self.proc.pid)[1:] if self.proc.poll() is None else []
        stop_process(self.proc, 60)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGKILL)


@dataclass
class ContainerArm:
    """One engine replica + one gateway of docker-compose.yml (+ compose.test.yml) on the CPU image."""

    stack: Stack
    url: str = ""
    ready_s: float = 0.0
    placement: str = field(default="")

    @classmethod
    def start(cls, docker_host: str, models: Path, work: Path, plan: CpuPlan | None) -> ContainerArm:
        engine_cpus = plan.engines[0] if plan else None
        gateway_cpus = plan.gateway if plan else None
        pinned = bool(plan and engine_cpus and gateway_cpus)
        stack = Stack(f"almbench{uuid.uuid4().hex[:8]}", docker_host, models, work / "compose.log",
                      extra_files=(HERE / "compose.bench.yml",) if pinned else ())  # fmt: skip
        stack.env["ALM_CPU_KVCACHE_GIB"] = KVCACHE_GIB
        if plan and engine_cpus and gateway_cpus:
            stack.env.update(
                ALM_CPU_THREADS_BIND=plan.workers[0] or "nobind",
                ALM_BENCH_ENGINE_CPUS=",".join(map(str, engine_cpus)),
                ALM_BENCH_GATEWAY_CPUS=",".join(map(str, gateway_cpus)),
            )
            arm = cls(stack, placement=(
                f"engine container cpuset {stack.env['ALM_BENCH_ENGINE_CPUS']} (model worker bound to "
                f"{stack.env['ALM_CPU_THREADS_BIND']}), gateway container cpuset {stack.env['ALM_BENCH_GATEWAY_CPUS']}"
            ))  # fmt: skip
        else:
            arm = cls(stack, placement="compose defaults: no cpuset, ALM_CPU_THREADS_BIND unset (model worker nobind)")
        start = time.monotonic()
        try:
            # Without Prometheus (the host arm has none) and one service per call, as Stack.up does (healthchecks
            # never run under Podman without systemd, so compose's depends_on conditions would wait forever).
            for service in ("engine", "gateway"):
                stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}=1", service)
            (arm.url,) = stack.gateway_urls()
            wait_for(lambda: stack.healthy_engines(arm.url) == 1, ENGINE_START_TIMEOUT_S, "the gateway's engine")
        except BaseException:
            print(stack.logs(), file=sys.stderr)
            arm.stop()
            raise
        arm.ready_s = time.monotonic() - start
        return arm

    def processes(self) -> dict[str, list[psutil.Process]]:
        found = {}
        for service in ("engine", "gateway"):
            (name,) = self.stack.containers(service)
            pid = json.loads(run(tool("podman"), "inspect", name).stdout)[0]["State"]["Pid"]
            found[service] = tree(pid)
        return found

    def stop(self) -> None:
        self.stack.down()
        left = self.stack.leftovers()
        if left:
            print(f"containers: `down` left {left} behind", file=sys.stderr)
