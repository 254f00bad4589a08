"""Encoder CUDA graphs through vLLM's own EncoderCudaGraphManager, on CPU (tests/model_plugins/graph_work.py).

Clips are packed end to end in patches (model_plugins/midashenglm/packing.py): replays equal the
eager encoder, run the front end once per step, and do at most 1.25x eager's work on the mixes of
issue 23. What this cannot show: that the forward is capturable on CUDA, and its speed (unverified;
see docs/gpu.md).
"""

import pytest
import torch
from vllm.model_executor.models.interfaces import supports_encoder_cudagraph

from model_plugins.midashenglm.cudagraph import CAPACITY_EIGHTHS, capacity
from tests.model_plugins.conftest import engine_config
from tests.model_plugins.graph_work import (
    DEPLOYED_WINDOWS,
    MIXES,
    counting,
    cpu_graphs,
    make_manager,
    mix_clips,
    use,
    work_ratio,
)

MAX_WINDOWS = 8  # 2016 patches: budgets 64, 128, ..., 1024, 2016; 31 clips per replay at most
SMALL_BUDGETS = [64, 128, 256, 512, 1024, 2016]


@pytest.fixture(scope="module")
def with_max_windows(tiny_model):
    """Set the encoder's window limit (what the start-up profile ran) for a manager's life; restored after."""
    saved = tiny_model.encoder.max_windows

    def set_to(count: int) -> None:
        tiny_model.encoder.max_windows = count

    yield set_to
    tiny_model.encoder.max_windows = saved


@pytest.fixture(scope="module")
def manager(tiny_model, tiny_checkpoint, with_max_windows):
    with_max_windows(MAX_WINDOWS)
    with cpu_graphs():
        return make_manager(tiny_model, engine_config(tiny_checkpoint))


@pytest.fixture(scope="module")
def deployed(tiny_model, tiny_checkpoint, with_max_windows):
    """Budgets as served: 600 s clips, 8192 batched tokens -> 120 windows profiled -> up to 30240 patches."""
    with_max_windows(DEPLOYED_WINDOWS)
    with cpu_graphs():
        return make_manager(tiny_model, engine_config(tiny_checkpoint))


def execute(model, manager, clips):
    with torch.inference_mode():
        return use(model, manager).execute({"waveform": clips})


def assert_equal_to_eager(model, got, clips):
    with torch.inference_mode():
        expected = model.embed_audio(clips)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)  # float32; padding is masked out


def test_the_model_opts_in_for_audio(tiny_model):
    assert supports_encoder_cudagraph(tiny_model)
    assert tiny_model.get_encoder_cudagraph_config().modalities == ["audio"]


def test_budgets_count_patches_up_to_the_profiled_windows(manager):
    assert manager.token_budgets == SMALL_BUDGETS  # vLLM's powers of two from 64, then 8 x 252
    assert manager.max_batch_size == 31  # vLLM: min(max // min, min) = min(2016 // 64, 64)
    assert sorted(manager.budget_graphs["default"]) == [(b, (k,)) for b in SMALL_BUDGETS for k in CAPACITY_EIGHTHS]


@pytest.mark.parametrize(("budget", "eighths"), [(64, 5), (64, 8), (1024, 7), (2016, 5), (2016, 8)])
def test_capture_buffers_have_the_capacity_shape(tiny_model, budget, eighths):
    slots = capacity(budget, eighths)
    inputs = tiny_model.prepare_encoder_cudagraph_capture_inputs(
        budget, 2, 2, torch.device("cpu"), torch.float32, axis_keys=(eighths,)
    )
    out = tiny_model.encoder_cudagraph_forward(dict(inputs.values))
    assert inputs.values["frames"].shape == (4 * slots, 64)
    assert out.shape == (slots // 5, tiny_model.config.text_config.hidden_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "seconds",
    [
        [1.0],  # 25 patches: the smallest capacity
        [2.0, 3.0],  # two partial windows, end to end in one replay
        [25.0, 30.0],  # windows of two clips straddling the attention rows
        [61.0],  # 6 full windows and a partial one
        [2.0, 25.0, 10.08, 12.0, 1.0],  # mixed
        [95.0, 3.0],  # 2375 patches: beyond every budget -> vLLM's eager fallback, from the step's front end
    ],
)
def test_replayed_batches_equal_the_eager_encoder(tiny_model, manager, seconds):
    clips = mix_clips(seconds)
    assert_equal_to_eager(tiny_model, execute(tiny_model, manager, clips), clips)


def test_the_front_end_runs_once_per_step_however_many_replays(tiny_model, manager):
    clips = mix_clips([2.0] * 40 + [95.0])  # 31 clips per replay at most, and one clip beyond every budget
    with counting(tiny_model, manager) as count, torch.inference_mode():
        got = manager.execute({"waveform": clips})
    assert len(count.capacities) == 2 and count.eager_clips == [2375]
    assert count.front_ends == 1
    assert_equal_to_eager(tiny_model, got, clips)


@pytest.mark.parametrize("mix", list(MIXES))
def test_replays_do_at_most_125_percent_of_eager_work(tiny_model, deployed, mix):
    """Replay work / eager work (FLOPs of the published encoder: linear layers per slot + attention per pair),
    through vLLM's manager with the budgets of a deployment; before packing: 56.9x, 5.7x, 2.5x, 1.48x, 1.48x, 1.01x."""
    clips = mix_clips(MIXES[mix])
    ratio, count = work_ratio(tiny_model, deployed, clips)
    assert count.eager_clips == [] and count.front_ends == 1
    assert 1.0 <= ratio <= 1.25, (mix, ratio, count.capacities)
    assert_equal_to_eager(tiny_model, execute(tiny_model, deployed, clips), clips)


def test_padding_slots_do_not_reach_real_patches(tiny_model):
    """Junk in every slot past the batch (features and window ids of one padding window) leaves the clips'
    tokens bit for bit as with zeros: attention never crosses a window, so padding cannot leak in."""
    clips = mix_clips([2.0, 12.0])  # 50 + 300 patches: windows of 50, 252 and 48, in 2 attention rows with halo
    budget = 512
    with torch.inference_mode():
        replay = tiny_model.prepare_encoder_cudagraph_replay_buffers({"waveform": clips}, 2, 0).values
        outputs = []
        for junk in (False, True):
            values = tiny_model.prepare_encoder_cudagraph_capture_inputs(
                budget, 2, 0, torch.device("cpu"), torch.float32, axis_keys=(8,)
            ).values
            for key, source in replay.items():
                values[key][: source.shape[0]].copy_(source)
            if junk:
                values["frames"][replay["frames"].shape[0] :].normal_(0.0, 30.0)
            outputs.append(tiny_model.encoder_cudagraph_forward(values)[: (50 + 300) // 5])
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    assert_equal_to_eager(tiny_model, list(outputs[0].split([10, 60])), clips)
