"""The batched mel front end: equal to one STFT per clip and to a float64 numpy reference,
and exact under bf16 (built the way vLLM builds the model, default dtype = bfloat16)."""

import json

import numpy as np
import pytest
import torch

from model_plugins.midashenglm import frontend
from model_plugins.midashenglm.config import DashengEncoderConfig
from model_plugins.midashenglm.frontend import LogMelFrontend
from tests.model_plugins.conftest import load_model, tone
from tests.model_plugins.legacy import per_clip_log_mel
from tests.model_plugins.reference import reference_log_mel
from tests.model_plugins.sync_trap import no_host_sync

CPU = torch.device("cpu")
# Clips of every shape class: shorter than a patch group, exactly one window, several windows.
MIXED_SECONDS = [0.2, 3.0, 10.08, 25.0, 2.0, 12.0, 0.05]


def mixed_clips(seed: int = 0) -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, 200.0 + 90 * i, seed=seed + i)) for i, s in enumerate(MIXED_SECONDS)]


def clip_mel(packed, i: int, mels: torch.Tensor | None = None) -> torch.Tensor:
    """Clip i's columns of `mels` (default: the packed log-mel)."""
    start = packed.frame_offsets[i]
    return (packed.mels if mels is None else mels)[:, start : start + packed.frames[i]]


@pytest.fixture(scope="module")
def encoder_config(tiny_checkpoint) -> DashengEncoderConfig:
    return DashengEncoderConfig(**json.loads((tiny_checkpoint / "config.json").read_text())["audio_encoder_config"])


@pytest.mark.parametrize("frames_per_pass", [16 * 1008, 700])
def test_one_batched_stft_equals_one_stft_per_clip(tiny_model, monkeypatch, frames_per_pass):
    """Packing clips into one signal (in one pass, or several) changes nothing per clip: float32,
    max |diff| <= 1e-5 dB (measured: bitwise equal on this CPU)."""
    monkeypatch.setattr(frontend, "STFT_FRAMES_PER_PASS", frames_per_pass)
    encoder, clips = tiny_model.encoder, mixed_clips()
    packed = encoder.front_end(clips)
    for i, clip in enumerate(clips):
        torch.testing.assert_close(clip_mel(packed, i), per_clip_log_mel(encoder, clip), atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames_per_pass", [16 * 1008, 700])
def test_bucketed_fft_lengths_leave_every_kept_frame_unchanged(tiny_model, monkeypatch, frames_per_pass):
    """Rounding each pass up to a bucket only adds frames over the zeros after the packed signal (each clip is
    reflect-padded, i.e. centred, before packing, so no kept frame reads them); those are dropped. Equal to the
    unbucketed computation (float32, bitwise on this CPU; bound 1e-6 dB), floors included."""
    monkeypatch.setattr(frontend, "STFT_FRAMES_PER_PASS", frames_per_pass)
    front_end, clips = tiny_model.encoder.front_end, mixed_clips()
    bucketed = front_end(clips)
    monkeypatch.setattr(frontend, "fft_frames", lambda frames: frames)
    exact = front_end(clips)
    assert bucketed.frame_offsets == exact.frame_offsets and bucketed.frames == exact.frames
    torch.testing.assert_close(bucketed.mels, exact.mels, atol=1e-6, rtol=0)


def test_fft_lengths_come_from_a_few_buckets(tiny_model, monkeypatch):
    """Whatever the clips, the STFT passes transform one of 13 frame counts (cuFFT plans are per size)."""
    seen: set[int] = set()
    stft = torch.stft

    def spy(signal, *args, **kwargs):
        out = stft(signal, *args, **kwargs)
        seen.add(out.shape[-1])
        return out

    monkeypatch.setattr(torch, "stft", spy)
    rng = np.random.default_rng(0)
    for _ in range(30):
        seconds = rng.uniform(0.05, 60.0, size=rng.integers(1, 5))
        tiny_model.encoder.front_end([torch.zeros(int(s * 16000)) for s in seconds])
    assert seen <= {frontend.fft_frames(n) for n in range(1, 16 * 1008 + 1)}
    assert len({frontend.fft_frames(n) for n in range(1, 16 * 1008 + 1)}) == 13
    assert all(n <= frontend.fft_frames(n) <= max(256, 1.5 * n) for n in range(1, 16 * 1008 + 1))


def test_the_front_end_never_makes_the_host_wait_for_the_device(encoder_config):
    """Packing, bucketed STFT passes and per-clip floors on "meta" tensors inside the sync trap (see
    tests/model_plugins/qwen_audio/test_tower.py): no value read back, no blocking or pageable copy."""
    front_end = LogMelFrontend(encoder_config)
    clips = [torch.zeros(int(s * 16000), device="meta") for s in [25.0, 2.0, 0.3, 12.0]]
    with torch.inference_mode(), no_host_sync():
        packed = front_end(clips)
    assert packed.frames == [2501, 201, 31, 1201] and packed.mels.shape == (64, 3947)


@pytest.mark.parametrize("seconds", [0.2, 1.0, 10.08])
def test_log_mel_matches_numpy_fft_reference(encoder_config, seconds):
    clip = tone(seconds, freq=1234.0) * np.linspace(0.0, 1.0, int(seconds * 16000), dtype=np.float32)
    packed = LogMelFrontend(encoder_config)([torch.from_numpy(clip), torch.from_numpy(tone(7.0))])
    ours = clip_mel(packed, 0).double().numpy()
    expected = reference_log_mel(clip, encoder_config.to_dict())
    assert ours.shape == expected.shape == (64, clip.size // 160 + 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)  # float32 vs float64


def test_top_db_floor_is_per_clip(encoder_config):
    """Silence next to a loud clip is floored at its own peak - 120 dB, not the loud clip's."""
    packed = LogMelFrontend(encoder_config)([torch.zeros(16000), torch.from_numpy(tone(1.0)) * 100])
    silence, loud = clip_mel(packed, 0), clip_mel(packed, 1)
    assert torch.isfinite(packed.mels).all()
    assert silence.min() == silence.max() == -100.0  # 10*log10(1e-10), its own floor
    assert loud.min() >= loud.max() - 120.0 and loud.max() > 0


def test_tables_stay_float32_when_the_model_is_cast(encoder_config):
    front_end = LogMelFrontend(encoder_config).to(torch.bfloat16)
    window, bank = front_end.tables(CPU)
    assert window.dtype == bank.dtype == torch.float32
    torch.testing.assert_close(window, torch.hann_window(512, dtype=torch.float64).float(), atol=2e-7, rtol=0)


def bf16_feature_errors(model_bf16, model_f32, clips) -> tuple[float, float, float, float]:
    """(max, mean) |bf16 model features - f32 features| and (max, mean) of bf16 rounding alone,
    over every clip's real frames."""
    with torch.inference_mode():
        ours, packed = model_bf16.encoder.features(clips)
        exact, _ = model_f32.encoder.features(clips)
    assert ours.dtype == torch.bfloat16 and exact.dtype == torch.float32
    got = torch.cat([clip_mel(packed, i, ours) for i in range(len(clips))], dim=1)
    want = torch.cat([clip_mel(packed, i, exact) for i in range(len(clips))], dim=1)
    error = (got.float() - want).abs()
    rounding = (want.bfloat16().float() - want).abs()
    return error.max().item(), error.mean().item(), rounding.max().item(), rounding.mean().item()


@pytest.fixture(scope="module")
def bf16_model(tiny_checkpoint):
    return load_model(tiny_checkpoint, dtype="bfloat16")


def within_twice_bf16_rounding(errors: tuple[float, float, float, float]) -> bool:
    err_max, err_mean, round_max, round_mean = errors
    return err_max <= 2 * round_max and err_mean <= 2 * round_mean


def test_bf16_model_features_are_the_float32_features_rounded_once(bf16_model, tiny_model):
    assert bf16_model.encoder.patch_embed.proj.weight.dtype == torch.bfloat16  # really built in bf16
    assert bf16_model.encoder.init_bn.running_var.dtype == torch.float32
    errors = bf16_feature_errors(bf16_model, tiny_model, mixed_clips(seed=3))
    assert within_twice_bf16_rounding(errors), errors


def test_the_bf16_check_catches_a_bf16_built_window(bf16_model, tiny_model, monkeypatch):
    """The same check fails when the Hann window is built in bf16 (the bug this guards)."""
    window, bank = bf16_model.encoder.front_end.tables(CPU)
    bad = torch.hann_window(window.shape[0], dtype=torch.bfloat16).float()
    monkeypatch.setitem(bf16_model.encoder.front_end._tables, CPU, (bad, bank))
    errors = bf16_feature_errors(bf16_model, tiny_model, mixed_clips(seed=3))
    assert not within_twice_bf16_rounding(errors), errors
