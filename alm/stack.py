"""``alm serve``: one machine, N vLLM engine replicas (with our plugin) and the gateway, supervised.

Start-up: engines (each in its own session, logs to files) → wait healthy → gateway (``alm gateway``) → wait
ready → print the URL. Each engine's command line comes from the engine contract (``alm.engine``), as
``alm engine``'s does; the gateway reads the same ``ALM_*`` environment. Gateway and engines share a tmpfs
directory, so clips go to the engines as files, not base64. Placement (``alm.placement``): on a CPU-only host
each engine and the gateway get cores of their own; on CUDA one GPU per engine, or a share of one.
Ctrl-C / SIGTERM: the gateway drains its in-flight requests first, then the engines stop;
a child that does not stop in time is killed with its whole process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alm import placement
from alm.engine import EngineLaunch, EngineSettings, engine_launch
from alm.gateway import gateway_argv
from alm.paths import cache_dir, make_shared_audio_dir, tiny_checkpoint
from alm.processes import STOP_TIMEOUT_S, Child, free_port, spawn, stop_process, wait_ok

START_TIMEOUT_S = 900.0
GATEWAY_START_TIMEOUT_S = 120.0


@dataclass
class EnginePlan:
    port: int
    launch: EngineLaunch
    env: dict[str, str]
    """The contract's environment plus this engine's placement (model worker cores, CUDA devices)."""
    cores: list[int] | None
    """CPU cores of its whole process tree; None: any."""


def plan_stack(
    settings: EngineSettings, ports: list[int], shared_dir: Path
) -> tuple[list[EnginePlan], list[int] | None]:
    """One launch per engine (the contract on loopback, with this host's CPU or GPU placement); the gateway's
    cores (None: any)."""
    engines = len(ports)
    cpu = placement.cpu_plan(engines)
    devices = () if placement.cpu_build() else placement.gpu_devices()
    gpu = placement.gpu_plan(engines, devices, settings.gpu_memory_utilization)
    plans = []
    for i, port in enumerate(ports):
        launch = engine_launch(settings.model_copy(update={
            "engine_host": "127.0.0.1", "engine_port": port, "shared_audio_dir": str(shared_dir),
            "gpu_memory_utilization": gpu[i].memory_utilization,
        }))  # fmt: skip
        env = dict(launch.env)
        if cpu.workers[i] is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu.workers[i]  # type: ignore[assignment]
        if gpu[i].devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu[i].devices  # type: ignore[assignment]
        plans.append(EnginePlan(port, launch, env, cpu.engines[i]))
    return plans, cpu.gateway


def _wait_ok(child: Child, path: str, stopping: list[bool], timeout_s: float) -> bool:
    if wait_ok(child.proc, child.url + path, timeout_s, lambda: stopping[0]):
        return True
    if child.proc.poll() is not None:
        print(
            f"alm: {child.name} exited with {child.proc.returncode}"
            + (f"; see {child.log_path}" if child.log_path else ""),
            file=sys.stderr,
            flush=True,
        )
    return False


def run_stack(
    settings: EngineSettings, port: int, engines: int = 1, *, host: str = "127.0.0.1", log_dir: Path | None = None
) -> int:
    """Run engines + gateway until SIGINT/SIGTERM; returns the process exit code."""
    from server.config import load_settings

    if engines < 1:
        print("alm: --engines must be at least 1", file=sys.stderr)
        return 2
    gateway_settings = load_settings()  # the gateway reads the same environment: refuse bad settings up front
    if not settings.model_path:
        print(
            f"alm: serving the embedded tiny model from {cache_dir() / 'tiny-midashenglm'} (created if absent)",
            flush=True,
        )
        settings = settings.model_copy(update={"model_path": str(tiny_checkpoint())})
    log_dir = log_dir or cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    stopping = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stopping[0] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    shared = make_shared_audio_dir()  # engines and gateway share this host: clips go over as files
    children: list[Child] = []
    try:
        plans, gateway_cores = plan_stack(settings, [free_port() for _ in range(engines)], shared)
        for i, plan in enumerate(plans):
            log_path = log_dir / f"engine-{i}.log"
            children.append(
                spawn(
                    f"engine-{i}",
                    plan.launch.argv,
                    f"http://127.0.0.1:{plan.port}",
                    {**env, **plan.env},
                    log_path,
                    plan.cores,
                )
            )
            where = f", CPU(s) {plan.cores}" if plan.cores else ""
            if "CUDA_VISIBLE_DEVICES" in plan.env:
                where = f", GPU {plan.env['CUDA_VISIBLE_DEVICES']}"
            print(f"alm: engine-{i} starting on 127.0.0.1:{plan.port}{where} (log: {log_path})", flush=True)
        for child in children:
            if not _wait_ok(child, "/health", stopping, START_TIMEOUT_S):
                return 0 if stopping[0] else 1
        gw_env = {**env, "ALM_ENGINE_URLS": ",".join(c.url for c in children), "ALM_SHARED_AUDIO_DIR": str(shared)}
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        gateway = spawn("gateway", gateway_argv(host, port), f"http://{local}:{port}", gw_env, None, gateway_cores)
        children.append(gateway)
        if not _wait_ok(gateway, "/ready", stopping, GATEWAY_START_TIMEOUT_S):
            return 0 if stopping[0] else 1
        print(
            f"alm: serving '{settings.served_name}' at http://{host}:{port}/v1 with {engines} engine(s) — "
            "Ctrl-C to stop",
            flush=True,
        )
        while not stopping[0]:
            if gateway.proc.poll() is not None:
                print(f"alm: gateway exited with {gateway.proc.returncode}", file=sys.stderr, flush=True)
                return 1
            if all(c.proc.poll() is not None for c in children[:-1]):
                print("alm: every engine has exited; stopping", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
        print("alm: stopping (draining in-flight requests)", flush=True)
        return 0
    finally:
        # Gateway first (it drains in-flight requests), then engines.
        for child in reversed(children):
            grace = gateway_settings.graceful_shutdown_s + 5 if child.name == "gateway" else STOP_TIMEOUT_S
            stop_process(child.proc, grace)
        shutil.rmtree(shared, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
