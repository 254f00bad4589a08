"""The plugin's encoder + projector against first-principles re-computations and against the
pre-batching path (legacy.py); bounded window chunks and their activation memory."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.model_plugins.conftest import tone
from tests.model_plugins.legacy import legacy_encode
from tests.model_plugins.memory import ActivationPeak
from tests.model_plugins.reference import reference_audio_embeddings

# 3 s (1 partial window), 25 s (2 full + 1 partial), 10.08 s (exactly 1 full), 2 s and 12 s.
MIXED = [3.0, 25.0, 10.08, 2.0, 12.0, 30.0, 2.0]


def clips_of(seconds: list[float], seed: int = 0) -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, 250.0 + 70 * i, seed=seed + i)) for i, s in enumerate(seconds)]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    return config, load_file(tiny_checkpoint / "model.safetensors")


@pytest.fixture
def max_windows(tiny_model):
    """Set the encoder's chunk size for one test, restored after."""
    saved = tiny_model.encoder.max_windows

    def set_to(count: int) -> None:
        tiny_model.encoder.max_windows = count

    yield set_to
    tiny_model.encoder.max_windows = saved


@pytest.fixture
def forward_calls(tiny_model, monkeypatch):
    """Records (windows, width in patches, masked, activation peak bytes) of every forward_windows call."""
    encoder, calls = tiny_model.encoder, []
    original = encoder.forward_windows

    def spy(windows, key_mask):
        with ActivationPeak() as peak:
            out = original(windows, key_mask)
        calls.append((windows.shape[0], out.shape[1], key_mask is not None, peak.peak_bytes))
        return out

    monkeypatch.setattr(encoder, "forward_windows", spy)
    return calls


def test_encoder_and_projector_match_eager_reference(tiny_model, checkpoint):
    config, tensors = checkpoint
    clips = [tone(3.0, 300.0, seed=1), tone(25.0, 700.0, seed=2), tone(10.08, 900.0, seed=3)]
    with torch.inference_mode():
        ours = tiny_model.embed_audio([torch.from_numpy(c) for c in clips])
        expected = [reference_audio_embeddings(c, tensors, config) for c in clips]
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("chunk", [1, 2, 3, 64])
def test_chunked_encoder_equals_the_one_batch_path_for_mixed_clips(tiny_model, max_windows, chunk):
    """float32; measured max |diff| ~1.2e-6 against activations of magnitude ~1."""
    max_windows(chunk)
    clips = clips_of(MIXED)
    with torch.inference_mode():
        ours = tiny_model.encoder(clips)
        before = legacy_encode(tiny_model.encoder, clips)
    for got, want in zip(ours, before, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_clip_output_does_not_depend_on_its_batch(tiny_model):
    short, long = torch.from_numpy(tone(3.0, seed=1)), torch.from_numpy(tone(25.0, 700.0, seed=2))
    with torch.inference_mode():
        (alone,) = tiny_model.embed_audio([short])
        batched = tiny_model.embed_audio([long, short, long])
    torch.testing.assert_close(batched[1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], batched[2], atol=0, rtol=0)


def test_full_windows_run_unmasked_and_partial_ones_are_padded_at_most_twofold(tiny_model, forward_calls, max_windows):
    max_windows(64)
    with torch.inference_mode():
        tiny_model.encoder(clips_of([25.0, 14.0, 1.0, 2.0, 10.08]))
    # Full windows: 2 of 25 s, 1 of 14 s, the 10.08 s clip. Tails: 121 (25 s), 98 (14 s), 25, 50 patches.
    assert [call[:3] for call in forward_calls] == [(4, 252, False), (2, 121, True), (1, 50, False), (1, 25, False)]


def test_equal_partial_windows_need_no_mask(tiny_model, forward_calls):
    with torch.inference_mode():
        tiny_model.encoder(clips_of([2.0, 2.0, 2.0]))
    assert [call[:3] for call in forward_calls] == [(3, 50, False)]


def test_no_forward_runs_more_windows_than_the_limit(tiny_model, forward_calls, max_windows):
    max_windows(2)
    with torch.inference_mode():
        tiny_model.encoder(clips_of(MIXED))
    windows = [call[0] for call in forward_calls]
    assert max(windows) == 2 and sum(windows) == 1 + 3 + 1 + 1 + 2 + 3 + 1


def test_activation_memory_is_bounded_by_the_chunk_size(tiny_model, forward_calls, max_windows):
    """Peak live activations of one encoder forward grow with its windows, so the chunk size bounds
    them: 8 full windows in chunks of 2 peak at ~2/8 of running all 8 at once."""
    clips = clips_of([80.64])  # exactly 8 full windows
    peaks = {}
    for chunk in (1, 2, 8):
        max_windows(chunk)
        forward_calls.clear()
        with torch.inference_mode():
            tiny_model.encoder(clips)
        assert {call[0] for call in forward_calls} == {chunk}
        peaks[chunk] = max(call[3] for call in forward_calls)
    assert peaks[2] <= 2 * peaks[1] * 1.05
    assert peaks[8] <= 8 * peaks[1] * 1.05
    assert peaks[8] >= 3 * peaks[2]  # unchunked really costs more: the bound is doing something
