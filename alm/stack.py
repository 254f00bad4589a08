"""``alm serve``: one machine, N vLLM engine replicas per model (with our plugin) and the gateway, supervised.

Several ``--model`` checkpoints run behind the one gateway, each served under its directory's name; the gateway
routes by the request's ``model`` and learns each one's audio facts (family, longest clip) from
``ALM_MODEL_FACTS``, which ``gateway_env`` fills in from the checkpoints (alm/families.py).

Start-up: engines (each in its own session, logs to files) → wait healthy → gateway (``alm gateway``) → wait
ready → print the URL. Engines that share a GPU start one after another, each once the one before answers
``/health`` (``placement.start_waves``); the others start at once. Each engine's command line comes from the engine
contract (``alm.engine``), as ``alm engine``'s does; the gateway reads the same ``ALM_*`` environment. Gateway and
engines share a tmpfs directory, so clips go to the engines as files, not base64. Placement (``alm.placement``): on
a CPU-only host each engine and the gateway get cores of their own; on CUDA each engine gets as many GPUs as its
tensor × pipeline (× ...) parallel sizes in ``ALM_ENGINE_ARGS`` ask for, a one-GPU engine possibly a share of one.
Ctrl-C / SIGTERM: the gateway drains its in-flight requests first, then the engines stop;
a child that does not stop in time is killed with its whole process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alm import families, placement
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
    settings: EngineSettings | Sequence[EngineSettings], ports: list[int], shared_dir: Path
) -> tuple[list[EnginePlan], list[int] | None]:
    """One launch per engine (the contract on loopback, with this host's CPU or GPU placement); the gateway's
    cores (None: any). ``settings``: every engine's, or one per port (engines of several models).
    ``placement.NotEnoughGpus`` (a ValueError) when the engines ask for more GPUs than this host shows."""
    engines = len(ports)
    each = [settings] * engines if isinstance(settings, EngineSettings) else list(settings)
    if len(each) != engines:
        raise ValueError(f"{len(each)} engine settings for {engines} ports")
    widths = [placement.engine_width(s.engine_args) for s in each]
    cpu = placement.cpu_plan(engines, widths)
    devices = () if placement.cpu_build() else placement.gpu_devices()
    gpu = placement.gpu_slots(widths, devices, each[0].gpu_memory_utilization)
    plans = []
    for i, port in enumerate(ports):
        launch = engine_launch(each[i].model_copy(update={
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


def gateway_env(
    models: Sequence[EngineSettings], engine_urls: Sequence[str], shared_dir: Path, env: dict[str, str]
) -> dict[str, str]:
    """The gateway's environment: ``env`` plus its engines, the shared audio directory and each model's audio
    facts read from its checkpoint (``ALM_MODEL_FACTS``; entries the operator set in ``env`` win)."""
    facts = families.model_facts_env({m.served_name: m.model_path for m in models}, env.get("ALM_MODEL_FACTS", ""))
    out = {**env, "ALM_ENGINE_URLS": ",".join(engine_urls), "ALM_SHARED_AUDIO_DIR": str(shared_dir)}
    if facts:
        out["ALM_MODEL_FACTS"] = facts
    return out


def check_models(models: Sequence[EngineSettings]) -> list[EngineSettings]:
    """``models``, the embedded tiny model standing in for one without a checkpoint; ValueError on none, on a
    missing checkpoint among several, or on two models of one served name."""
    if not models:
        raise ValueError("no model to serve")
    if len(models) == 1 and not models[0].model_path:
        print(
            f"alm: serving the embedded tiny model from {cache_dir() / 'tiny-midashenglm'} (created if absent)",
            flush=True,
        )
        return [models[0].model_copy(update={"model_path": str(tiny_checkpoint())})]
    if any(not m.model_path for m in models):
        raise ValueError("every --model needs a checkpoint directory")
    names = [m.served_name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two models would be served under one name: {names}; give their directories distinct names")
    return list(models)


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


def _start_engine(i: int, plan: EnginePlan, served_name: str, env: dict[str, str], log_dir: Path) -> Child:
    log_path = log_dir / f"engine-{i}.log"
    url = f"http://127.0.0.1:{plan.port}"
    child = spawn(f"engine-{i}", plan.launch.argv, url, {**env, **plan.env}, log_path, plan.cores)
    where = f", CPU(s) {plan.cores}" if plan.cores else ""
    gpus = plan.env.get("CUDA_VISIBLE_DEVICES")
    if gpus is not None:
        where = f", GPU{'s' if ',' in gpus else ''} {gpus}"
    print(f"alm: engine-{i} ({served_name}) starting on 127.0.0.1:{plan.port}{where} (log: {log_path})", flush=True)
    return child


def run_stack(
    settings: EngineSettings | Sequence[EngineSettings],
    port: int,
    engines: int = 1,
    *,
    host: str = "127.0.0.1",
    log_dir: Path | None = None,
) -> int:
    """Run ``engines`` engines per model + the gateway until SIGINT/SIGTERM; returns the process exit code.
    ``settings``: one model's engine settings, or one per model."""
    from server.config import load_settings

    if engines < 1:
        print("alm: --engines must be at least 1", file=sys.stderr)
        return 2
    gateway_settings = load_settings()  # the gateway reads the same environment: refuse bad settings up front
    models = check_models([settings] if isinstance(settings, EngineSettings) else settings)
    per_engine = [m for m in models for _ in range(engines)]
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
        plans, gateway_cores = plan_stack(per_engine, [free_port() for _ in per_engine], shared)
        waves = placement.start_waves([p.env.get("CUDA_VISIBLE_DEVICES") for p in plans])
        if len(waves) > 1:
            order = " → ".join(" + ".join(f"engine-{i}" for i in wave) for wave in waves)
            print(f"alm: engines that share a GPU start one after another (→: once healthy): {order}", flush=True)
        engine_urls = [f"http://127.0.0.1:{p.port}" for p in plans]
        for wave in waves:
            started = [_start_engine(i, plans[i], per_engine[i].served_name, env, log_dir) for i in wave]
            children += started
            for child in started:
                if not _wait_ok(child, "/health", stopping, START_TIMEOUT_S):
                    return 0 if stopping[0] else 1
        gw_env = gateway_env(models, engine_urls, shared, env)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        gateway = spawn("gateway", gateway_argv(host, port), f"http://{local}:{port}", gw_env, None, gateway_cores)
        children.append(gateway)
        if not _wait_ok(gateway, "/ready", stopping, GATEWAY_START_TIMEOUT_S):
            return 0 if stopping[0] else 1
        served = ", ".join(f"'{m.served_name}'" for m in models)
        print(
            f"alm: serving {served} at http://{host}:{port}/v1 with {engines} engine(s) each — Ctrl-C to stop",
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
