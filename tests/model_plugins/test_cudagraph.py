"""Encoder CUDA graphs through vLLM's own EncoderCudaGraphManager, on CPU.

No GPU here, so the graph itself is replaced: "capture" runs the forward once on the capture
buffers (as vLLM's warm-up does) and "replay" re-runs encoder_cudagraph_forward on the SAME
buffers the manager has just filled. Everything else is vLLM's code: budgets, greedy packing,
buffer padding, eager fallback, output scattering. What this cannot show: that the forward is
capturable on CUDA, and its speed (unverified; see docs/bench-engine.md).
"""

import contextlib

import pytest
import torch
from vllm.model_executor.models.interfaces import supports_encoder_cudagraph
from vllm.v1.worker import encoder_cudagraph
from vllm.v1.worker.encoder_cudagraph import EncoderCudaGraphManager

from tests.model_plugins.conftest import engine_config, tone

MAX_WINDOWS = 8  # budgets [3, 6, 8] windows; 2 clips per replay at most


class RerunGraph:
    """Stands in for torch.cuda.CUDAGraph: replay() re-runs the forward on the captured buffers."""

    def __init__(self) -> None:
        self.rerun = None

    def replay(self) -> None:
        self.rerun()


@pytest.fixture
def manager(tiny_model, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(tiny_model.encoder, "max_windows", MAX_WINDOWS)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RerunGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda *args, **kwargs: contextlib.nullcontext())
    monkeypatch.setattr(encoder_cudagraph, "current_stream", lambda: None)
    config = engine_config(tiny_checkpoint)
    config.compilation_config.cudagraph_mm_encoder = True
    manager = EncoderCudaGraphManager(config, torch.device("cpu"), torch.float32, tiny_model)
    manager.capture(graph_pool=None)
    for meta in manager.budget_graphs["default"].values():

        def rerun(meta=meta):
            meta.output_buffer.copy_(tiny_model.encoder_cudagraph_forward(dict(meta.input_buffers)))

        meta.graph.rerun = rerun
    return manager


def clips_of(seconds: list[float]) -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, 180.0 + 60 * i, seed=20 + i)) for i, s in enumerate(seconds)]


def test_the_model_opts_in_for_audio(tiny_model):
    assert supports_encoder_cudagraph(tiny_model)
    assert tiny_model.get_encoder_cudagraph_config().modalities == ["audio"]


def test_budgets_count_windows_up_to_the_profiled_chunk(manager):
    assert manager.token_budgets == [3, 6, 8]
    assert manager.max_batch_size == 2  # vLLM: min(max // min, min) = min(8 // 3, 3)
    assert sorted(manager.budget_graphs["default"]) == [3, 6, 8]


@pytest.mark.parametrize("budget", [3, 6, 8])
def test_capture_buffers_have_the_budget_shape(tiny_model, budget):
    inputs = tiny_model.prepare_encoder_cudagraph_capture_inputs(budget, 2, 2, torch.device("cpu"), torch.float32)
    out = tiny_model.encoder_cudagraph_forward(dict(inputs.values))
    assert inputs.values["windows"].shape == (budget, 1, 64, 1008)
    assert out.shape == (budget * 252 // 5, tiny_model.config.text_config.hidden_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "seconds",
    [
        [1.0],  # 1 window: smallest budget, mostly padding
        [2.0, 3.0],  # two partial windows in one replay
        [25.0, 30.0],  # 3 + 3 windows: exactly the 6-window budget
        [61.0],  # 7 windows: padded to 8
        [2.0, 25.0, 10.08, 12.0, 1.0],  # mixed: several replays of different budgets
        [95.0, 3.0],  # 10 windows: beyond every budget -> vLLM's eager fallback
    ],
)
def test_replayed_buckets_equal_the_eager_encoder(tiny_model, manager, seconds):
    clips = clips_of(seconds)
    with torch.inference_mode():
        expected = tiny_model.embed_audio(clips)
        got = manager.execute({"waveform": clips})
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)  # float32; padding is masked out


def test_replays_are_used_for_clips_within_the_budgets(tiny_model, manager):
    with torch.inference_mode():
        manager.execute({"waveform": clips_of([2.0, 25.0, 95.0])})
    assert manager.graph_hits == 2 and manager.graph_misses == 1
