"""Where alm serve puts engines and the gateway: CPU cores on the CPU build, GPUs on CUDA (faked devices), and
which engines start together."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from alm import cli, placement
from alm.engine import EngineSettings
from alm.placement import (
    PARALLEL_FLAGS,
    CpuPlan,
    GpuSlot,
    NotEnoughGpus,
    cpu_plan,
    engine_width,
    gpu_plan,
    gpu_slots,
    start_waves,
)
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


def test_cpu_plan_binds_each_rank_of_a_wider_engine(clean_env) -> None:
    """vLLM's CPU binding takes one core list per rank (``|``-separated) and refuses another count."""
    clean_env.setattr(placement, "cpu_build", lambda: True)
    cores = [0, 1]
    clean_env.setattr(placement.os, "sched_getaffinity", lambda pid: set(cores))
    assert cpu_plan(1, [2]) == CpuPlan([[0, 1]], ["0|1"], None)  # tensor-parallel 2 on this machine
    assert cpu_plan(2, [2, 2]) == CpuPlan([None] * 2, [None] * 2, None)  # 4 ranks on 2 cores: left to vLLM
    cores[:] = range(8)
    assert cpu_plan(2, [2, 2]) == CpuPlan([[0, 1, 2], [3, 4, 5]], ["0|1", "3|4"], [6, 7])
    assert cpu_plan(1, [2]) == CpuPlan([[0, 1, 2, 3, 4, 5, 6]], ["0,1,2|3,4,5"], [7])


def test_gpu_plan() -> None:
    assert gpu_plan(2, (), None) == [GpuSlot(None, None)] * 2  # no GPU
    assert gpu_plan(2, ("0", "1", "2"), None) == [GpuSlot("0", None), GpuSlot("1", None)]  # one GPU each
    assert gpu_plan(2, ("0",), None) == [GpuSlot("0", 0.45)] * 2  # 0.9 of one GPU, split
    assert gpu_plan(4, ("0",), 0.8) == [GpuSlot("0", 0.2)] * 4  # the configured share, split
    assert gpu_plan(3, ("GPU-a", "GPU-b"), None) == [GpuSlot("GPU-a", 0.45), GpuSlot("GPU-b", 0.9),
                                                     GpuSlot("GPU-a", 0.45)]  # fmt: skip


@pytest.mark.parametrize(("args", "width"), [
    ([], 1),
    (["--tensor-parallel-size", "2"], 2),
    (["-tp", "2", "--pipeline-parallel-size=2"], 4),
    (["--tensor_parallel_size=2", "-pp=3"], 6),  # vLLM's parser takes underscores
    (["--tensor", "2", "--pi", "2"], 4),  # and unambiguous prefixes, as alm/engine.py refuses them
    (["-t", "2", "-pc", "2", "-dp", "2"], 8),
    (["-tp", "2", "--max-num-batched-tokens", "512", "-tp", "4"], 4),  # the last one wins
    (["--max-model-len", "4096", "--mm-encoder-tp-mode", "data", "-dcp", "2"], 1),  # no more devices
    (["--data-parallel-size-local", "2", "--t=2"], 1),  # not ours; "--t" is ambiguous to vLLM
    (["--", "-tp", "2"], 1),  # positional after "--"
])  # fmt: skip
def test_engine_width_is_the_product_of_the_parallel_sizes(args, width) -> None:
    assert engine_width(args) == width


@pytest.mark.parametrize("args", [["-tp"], ["-tp", "0"], ["--tensor-parallel-size=two"], ["-pp", "-1"]])
def test_engine_width_refuses_a_size_that_is_no_whole_number(args) -> None:
    with pytest.raises(ValueError, match=r"ALM_ENGINE_ARGS: .* needs a whole number of at least 1"):
        engine_width(args)


VLLM_WORLD_SIZE = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))
sizes = {}
for case in json.loads(sys.argv[1]):
    try:
        a = parser.parse_args(["--model", "/m", *case])
    except ValueError:
        sizes[" ".join(case)] = None
        continue
    sizes[" ".join(case)] = (a.tensor_parallel_size * a.pipeline_parallel_size * a.prefill_context_parallel_size
                             * a.data_parallel_size)
print(json.dumps(sizes))
"""


def test_engine_width_matches_vllms_own_parser() -> None:
    """Every spelling vLLM's parser takes for a PARALLEL_FLAGS size (each prefix, ``_``, ``=``), from the
    shortest it resolves on: engine_width counts what vLLM counts; every shorter prefix vLLM refuses."""
    cases, shorter = [], []
    for spellings in PARALLEL_FLAGS.values():
        for least, flag in spellings:
            for end in range(2, len(flag) + 1):
                name = flag[:end]
                if end < len(least):
                    shorter.append([name, "2"])
                    continue
                cases += [[name, "2"], [f"{name}=2"]]
                if name.startswith("--"):
                    cases.append(["--" + name[2:].replace("-", "_"), "2"])
    run = subprocess.run([sys.executable, "-c", VLLM_WORLD_SIZE, json.dumps(cases + shorter)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    vllm: dict[str, int | None] = json.loads(run.stdout.splitlines()[-1])
    for case in cases:
        ours: int | None
        try:
            ours = engine_width(case)
        except ValueError:
            ours = None
        if vllm[" ".join(case)] is not None:  # argparse refuses "-t=2": a short flag's "=" needs its full name
            assert ours == vllm[" ".join(case)] == 2, case
    for case in shorter:
        assert vllm[" ".join(case)] in (None, 1) and engine_width(case) == 1, case


def test_gpu_slots_give_wider_engines_gpus_of_their_own() -> None:
    four = ("0", "1", "2", "3")
    assert gpu_slots([2, 2], four, None) == [GpuSlot("0,1", None), GpuSlot("2,3", None)]  # tensor-parallel 2
    assert gpu_slots([4], four, 0.8) == [GpuSlot("0,1,2,3", 0.8)]
    assert gpu_slots([2, 1, 1], four, None) == [GpuSlot("0,1", None), GpuSlot("2", None), GpuSlot("3", None)]
    assert gpu_slots([2, 1, 1, 1], four, None) == [GpuSlot("0,1", None), GpuSlot("2", 0.45), GpuSlot("3", 0.9),
                                                   GpuSlot("2", 0.45)]  # fmt: skip
    assert gpu_slots([1, 1, 1], ("0", "1"), None) == gpu_plan(3, ("0", "1"), None)  # one-GPU engines: as before
    assert gpu_slots([2, 2], (), None) == [GpuSlot(None, None)] * 2  # the CPU build


@pytest.mark.parametrize(("widths", "devices", "needed"), [
    ([2, 2], ("0", "1", "2"), 4),
    ([4], ("0", "1"), 4),
    ([2, 1], ("0", "1"), 3),  # the one-GPU engine would have none left: wider engines never share
])  # fmt: skip
def test_gpu_slots_refuse_more_gpus_than_the_host_shows(widths, devices, needed) -> None:
    with pytest.raises(NotEnoughGpus, match=f"= {needed} GPUs needed, {len(devices)} visible") as refused:
        gpu_slots(widths, devices, None)
    assert refused.value.needed == needed and refused.value.devices == devices


def test_start_waves_start_engines_that_share_a_gpu_one_after_another() -> None:
    assert start_waves(["0", "1", "0"]) == [[0, 1], [2]]  # 3 engines on 2 GPUs
    assert start_waves(["0", "0", "0", "0"]) == [[0], [1], [2], [3]]
    assert start_waves(["0", "1", "2", "3"]) == [[0, 1, 2, 3]]  # a GPU each: all at once
    assert start_waves(["0,1", "2,3"]) == [[0, 1]]
    assert start_waves(["0,1", "2", "3", "2"]) == [[0, 1, 2], [3]]
    assert start_waves(["0,1", "1,2", "3"]) == [[0, 2], [1]]  # any GPU in common
    assert start_waves([None, None]) == [[0, 1]]  # the CPU build: all at once, as before
    assert start_waves([]) == []


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


def test_alm_serve_gives_a_tensor_parallel_engine_its_gpus(cuda_host, clean_env, tmp_path) -> None:
    clean_env.setattr(placement, "cpu_build", lambda: False)
    clean_env.setenv("ALM_ENGINE_ARGS", "--tensor-parallel-size 2 --mm-encoder-tp-mode data")
    cuda_host[0] = 4
    plans, _ = plan_stack(EngineSettings(model_path="/m"), [9000, 9001], tmp_path)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0,1", "2,3"]
    assert [flags(p.launch.argv).util for p in plans] == [None, None]  # GPUs of their own: vLLM's share
    assert start_waves([p.env["CUDA_VISIBLE_DEVICES"] for p in plans]) == [[0, 1]]


def test_alm_serve_refuses_more_gpus_than_the_host_shows(cuda_host, clean_env, tmp_path, capsys) -> None:
    clean_env.setattr(placement, "cpu_build", lambda: False)
    clean_env.setenv("ALM_ENGINE_ARGS", "-tp 2")
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    cuda_host[0] = 3
    assert cli.main(["serve", "--model", str(tmp_path), "--engines", "2"]) == 2
    err = capsys.readouterr().err
    assert "alm serve: 2 engine(s) × 2 GPUs = 4 GPUs needed, 3 visible (0,1,2)" in err, err
    assert "tensor-" in err and "never share" in err
