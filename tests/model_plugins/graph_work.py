"""vLLM's real EncoderCudaGraphManager on the CPU, and the encoder work its replays do.

No GPU here, so the graph itself is replaced: "capture" runs the forward once on the capture
buffers (as vLLM's warm-up does) and "replay" re-runs encoder_cudagraph_forward on the SAME
buffers the manager has just filled (or, with compute=False, does nothing: counting only).
Everything else is vLLM's code: budgets, greedy packing, capture axes, buffer padding, eager
fallback, output scattering. Shared by tests/model_plugins/test_cudagraph.py and bench/gpu/work.py.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import torch
from vllm.config import VllmConfig
from vllm.v1.worker import encoder_cudagraph
from vllm.v1.worker.encoder_cudagraph import EncoderCudaGraphManager

from model_plugins.midashenglm.config import DashengEncoderConfig
from model_plugins.midashenglm.cudagraph import capacity
from model_plugins.midashenglm.packing import EncoderWork, PackedRows, eager_work
from model_plugins.midashenglm.windows import plan_windows

# The mixes of issue 23: name -> clip seconds, all in one step.
MIXES = {
    "1x2s": [2.0],
    "10x2s": [2.0] * 10,
    "64x5s": [5.0] * 64,
    "20x30s": [30.0] * 20,
    "1x600s": [600.0],
    "2x600s": [600.0] * 2,
}
# Windows of the start-up profile with 600 s clips and 8192 batched tokens (2 clips x 60): the largest budget.
DEPLOYED_WINDOWS = 120
PUBLISHED = DashengEncoderConfig()  # the published encoder's sizes, to weigh tokens against attention pairs


class RerunGraph:
    """Stands in for torch.cuda.CUDAGraph: replay() re-runs the forward on the captured buffers."""

    def __init__(self) -> None:
        self.rerun = lambda: None

    def replay(self) -> None:
        self.rerun()


@contextlib.contextmanager
def cpu_graphs() -> Iterator[None]:
    """torch.cuda's graph capture replaced by RerunGraph, for as long as the manager is used."""
    with (
        mock.patch.object(torch.cuda, "CUDAGraph", RerunGraph),
        mock.patch.object(torch.cuda, "graph", lambda *args, **kwargs: contextlib.nullcontext()),
        mock.patch.object(encoder_cudagraph, "current_stream", lambda: None),
    ):
        yield


def make_manager(model: Any, config: VllmConfig, compute: bool = True) -> EncoderCudaGraphManager:
    """vLLM's manager over `model`, captured; call inside cpu_graphs()."""
    config.compilation_config.cudagraph_mm_encoder = True
    manager = EncoderCudaGraphManager(config, torch.device("cpu"), torch.float32, model)
    manager.capture(graph_pool=None)
    use(model, manager)
    if compute:
        for meta in manager.budget_graphs["default"].values():

            def rerun(meta=meta):
                meta.output_buffer.copy_(model.encoder_cudagraph_forward(dict(meta.input_buffers)))

            meta.graph.rerun = rerun
    return manager


def use(model: Any, manager: EncoderCudaGraphManager) -> EncoderCudaGraphManager:
    """Make `manager` the one whose budgets the model picks capacities for. A worker has one set of budgets
    (its profiling and serving managers capture the same); tests build managers of several sizes on one model."""
    model._graph_budgets = sorted(manager.path_token_budgets["default"])
    return manager


@dataclass
class StepCount:
    """What one manager.execute did: replay capacities, clips run eagerly, front-end passes."""

    capacities: list[int] = field(default_factory=list)
    eager_clips: list[int] = field(default_factory=list)  # patches of each clip the manager ran eagerly
    front_ends: int = 0


@contextlib.contextmanager
def counting(model: Any, manager: EncoderCudaGraphManager) -> Iterator[StepCount]:
    use(model, manager)
    count = StepCount()
    run_graph, eager, front_end = manager._run_budget_graph, model.encoder_eager_forward, model.encoder.front_end

    def spy_graph(mm_kwargs, token_budget, path="default", axis_keys=()):
        count.capacities.append(capacity(token_budget, axis_keys[0]))
        return run_graph(mm_kwargs, token_budget, path=path, axis_keys=axis_keys)

    def spy_eager(mm_kwargs, path="default"):
        count.eager_clips.extend(model._patches_per_clip(list(mm_kwargs["waveform"])))
        return eager(mm_kwargs, path=path)

    def spy_front_end(waveforms):
        count.front_ends += 1
        return type(front_end).forward(front_end, waveforms)

    with (
        mock.patch.object(manager, "_run_budget_graph", spy_graph),
        mock.patch.object(model, "encoder_eager_forward", spy_eager),
        mock.patch.object(front_end, "forward", spy_front_end),
    ):
        yield count


def eager_work_of(patches: list[int], max_windows: int) -> EncoderWork:
    return eager_work(plan_windows(patches, PUBLISHED.patches_per_window, max_windows))


def replay_work(count: StepCount, max_windows: int) -> EncoderWork:
    work = EncoderWork(0, 0)
    for slots in count.capacities:
        work += PackedRows.of(slots, PUBLISHED.patches_per_window).work
    if count.eager_clips:
        work += eager_work_of(count.eager_clips, max_windows)
    return work


def tone(seconds: float, freq: float, seed: int) -> torch.Tensor:
    """A sine with a little seeded noise, float32 at 16 kHz."""
    t = np.arange(round(seconds * 16000)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return torch.from_numpy((0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32))


def mix_clips(seconds: list[float]) -> list[torch.Tensor]:
    return [tone(s, 180.0 + 7 * i, seed=i) for i, s in enumerate(seconds)]


def work_ratio(model: Any, manager: EncoderCudaGraphManager, clips: list[torch.Tensor]) -> tuple[float, StepCount]:
    """(replay work / eager work in FLOPs of the published encoder, what the step did) for one execute."""
    max_windows = model.encoder.max_windows
    with counting(model, manager) as count, torch.inference_mode():
        manager.execute({"waveform": clips})
    eager = eager_work_of(model._patches_per_clip(clips), max_windows)
    return replay_work(count, max_windows).flops(PUBLISHED) / eager.flops(PUBLISHED), count
