"""The plugin's front end and encoder against first-principles re-computations."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_plugins.midashenglm.config import DashengEncoderConfig
from model_plugins.midashenglm.frontend import LogMelFrontend
from tests.model_plugins.conftest import tone
from tests.model_plugins.reference import reference_audio_embeddings, reference_log_mel


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    return config, load_file(tiny_checkpoint / "model.safetensors")


@pytest.mark.parametrize("seconds", [0.2, 1.0, 10.08])
def test_log_mel_matches_numpy_fft_reference(checkpoint, seconds):
    config, _ = checkpoint
    enc = config["audio_encoder_config"]
    clip = tone(seconds, freq=1234.0) * np.linspace(0.0, 1.0, int(seconds * 16000), dtype=np.float32)
    ours = LogMelFrontend(DashengEncoderConfig(**enc))(torch.from_numpy(clip)).double().numpy()
    expected = reference_log_mel(clip, enc)
    assert ours.shape == expected.shape == (64, clip.size // 160 + 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)  # float32 vs float64


def test_silence_is_floored_not_minus_infinity(checkpoint):
    config, _ = checkpoint
    mel = LogMelFrontend(DashengEncoderConfig(**config["audio_encoder_config"]))(torch.zeros(16000))
    assert torch.isfinite(mel).all() and mel.min() == -100.0


def test_encoder_and_projector_match_eager_reference(tiny_model, checkpoint):
    config, tensors = checkpoint
    clips = [tone(3.0, 300.0, seed=1), tone(25.0, 700.0, seed=2), tone(10.08, 900.0, seed=3)]
    with torch.inference_mode():
        ours = tiny_model.embed_audio([torch.from_numpy(c) for c in clips])
        expected = [reference_audio_embeddings(c, tensors, config) for c in clips]
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


def test_clip_output_does_not_depend_on_its_batch(tiny_model):
    short, long = torch.from_numpy(tone(3.0, seed=1)), torch.from_numpy(tone(25.0, 700.0, seed=2))
    with torch.inference_mode():
        (alone,) = tiny_model.embed_audio([short])
        batched = tiny_model.embed_audio([long, short, long])
    torch.testing.assert_close(batched[1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], batched[2], atol=0, rtol=0)


def test_windows_are_padded_to_the_longest_in_the_batch_not_to_ten_seconds(tiny_model):
    """A batch of short clips must not pay for full 1008-frame windows."""
    clips = [torch.from_numpy(tone(1.0)), torch.from_numpy(tone(2.0, seed=1))]
    batch = tiny_model.encoder.windows(clips)
    assert batch.mels.shape[-1] == 200  # 2 s: 201 frames -> 50 patches of 4 frames
    assert batch.key_mask.sum(dim=1).tolist() == [25, 50]
    long = tiny_model.encoder.windows([torch.from_numpy(tone(12.0))])
    assert long.mels.shape[-1] == 1008 and long.key_mask.sum(dim=1).tolist() == [252, 48]
