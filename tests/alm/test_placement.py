"""Where alm serve puts engines and the gateway: CPU cores on the CPU build, GPUs on CUDA (faked devices)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from alm import placement
from alm.engine import EngineSettings
from alm.placement import CpuPlan, GpuSlot, cpu_plan, gpu_plan
from alm.stack import plan_stack


def test_cpu_plan_gives_engines_and_gateway_cores_of_their_own(clean_env) -> None:
    """vLLM's automatic binding pins every engine's model worker to the same core and lets everything else land
    on it; alm serve splits the host."""
    clean_env.setattr(placement, "cpu_build", lambda: True)
    cores = [0, 1]
    clean_env.setattr(placement.os, "sched_getaffinity", lambda pid: set(cores))
    assert cpu_plan(1) == CpuPlan([[0]], ["0"], [1])  # this machine: engine | gateway
    assert cpu_plan(2) == CpuPlan([[0], [1]], ["0", "1"], None)
    assert cpu_plan(3) == CpuPlan([None] * 3, [None] * 3, None)  # more engines than cores
    cores[:] = range(8)
    # Two cores or more per engine: one of them stays free of model threads for the engine's front end.
    assert cpu_plan(2) == CpuPlan([[0, 1, 2], [3, 4, 5]], ["0,1", "3,4"], [6, 7])
    clean_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    assert cpu_plan(1) == CpuPlan([None], [None], None)  # the operator's binding wins
    clean_env.delenv("VLLM_CPU_OMP_THREADS_BIND")
    clean_env.setattr(placement, "cpu_build", lambda: False)
    assert cpu_plan(1).gateway is None  # CUDA build: nothing pinned


def test_gpu_plan() -> None:
    assert gpu_plan(2, (), None) == [GpuSlot(None, None)] * 2  # no GPU
    assert gpu_plan(2, ("0", "1", "2"), None) == [GpuSlot("0", None), GpuSlot("1", None)]  # one GPU each
    assert gpu_plan(2, ("0",), None) == [GpuSlot("0", 0.45)] * 2  # 0.9 of one GPU, split
    assert gpu_plan(4, ("0",), 0.8) == [GpuSlot("0", 0.2)] * 4  # the configured share, split
    assert gpu_plan(3, ("GPU-a", "GPU-b"), None) == [GpuSlot("GPU-a", 0.45), GpuSlot("GPU-b", 0.9),
                                                     GpuSlot("GPU-a", 0.45)]  # fmt: skip


@pytest.fixture
def cuda_host(clean_env):
    """A faked CUDA host: torch reports ``devices[0]`` GPUs."""
    import torch

    devices = [0]
    clean_env.setattr(torch.cuda, "is_available", lambda: devices[0] > 0)
    clean_env.setattr(torch.cuda, "device_count", lambda: devices[0])
    placement.gpu_devices.cache_clear()
    yield devices
    placement.gpu_devices.cache_clear()


def test_gpu_devices_follow_the_device_count_and_cuda_visible_devices(cuda_host, clean_env) -> None:
    cuda_host[0] = 4
    assert placement.gpu_devices() == ("0", "1", "2", "3")
    placement.gpu_devices.cache_clear()
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cuda_host[0] = 2  # torch counts only the visible ones
    assert placement.gpu_devices() == ("3", "5")  # engines get the parent's device names
    placement.gpu_devices.cache_clear()
    cuda_host[0] = 0
    assert placement.gpu_devices() == ()


def flags(argv: tuple[str, ...]) -> SimpleNamespace:
    args = list(argv)
    util = args[args.index("--gpu-memory-utilization") + 1] if "--gpu-memory-utilization" in args else None
    return SimpleNamespace(util=util, hf=json.loads(args[args.index("--hf-overrides") + 1]))


@pytest.mark.parametrize(("gpus", "engines", "devices", "utils"), [
    (2, 2, ["0", "1"], [None, None]),  # one GPU per engine, vLLM's default share of it
    (4, 2, ["0", "1"], [None, None]),
    (1, 2, ["0", "0"], ["0.45", "0.45"]),  # they share one: each claims half of vLLM's 0.9
    (2, 3, ["0", "1", "0"], ["0.45", "0.9", "0.45"]),
])  # fmt: skip
def test_alm_serve_on_cuda_places_one_engine_per_gpu_or_splits_memory(
    cuda_host, clean_env, tmp_path, gpus, engines, devices, utils
) -> None:
    clean_env.setattr(placement, "cpu_build", lambda: False)
    cuda_host[0] = gpus
    plans, gateway_cores = plan_stack(EngineSettings(model_path="/m"), list(range(9000, 9000 + engines)), tmp_path)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == devices
    assert [flags(p.launch.argv).util for p in plans] == utils
    assert [p.cores for p in plans] == [None] * engines and gateway_cores is None
    assert "--dtype" not in plans[0].launch.argv  # CUDA build: vLLM's dtype


def test_alm_serve_on_the_cpu_build_pins_cores(clean_env, tmp_path) -> None:
    clean_env.setattr(placement, "cpu_build", lambda: True)
    clean_env.setattr(placement.os, "sched_getaffinity", lambda pid: {0, 1})
    plans, gateway_cores = plan_stack(EngineSettings(model_path="/m"), [9000], tmp_path)
    assert plans[0].cores == [0] and plans[0].env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and gateway_cores == [1]
    assert "CUDA_VISIBLE_DEVICES" not in plans[0].env
