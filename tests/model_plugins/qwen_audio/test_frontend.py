"""The Whisper log-mel front end of Qwen-Audio: equal to a float64 numpy reference of the published definition,
its mel filters equal to librosa's Slaney definition, per-clip floors, float32 whatever the default dtype."""

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank

from model_plugins.qwen_audio import frontend
from model_plugins.qwen_audio.frontend import frames_needed, log_mel, mel_filters
from tests.model_plugins.conftest import tone
from tests.model_plugins.qwen_audio.reference import reference_log_mel, slaney_mel_filters

SECONDS = [0.5, 1.0, 10.0, 29.99, 30.0]


def clips(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    """Tones with a rising envelope, a different pitch per clip (non-trivial floors and spectra)."""
    out = []
    for i, s in enumerate(seconds):
        clip = tone(s, freq=220.0 * (i + 1) + 37.0, seed=seed + i)
        out.append(clip * np.linspace(0.05, 1.0, clip.size, dtype=np.float32))
    return out


def test_log_mel_matches_the_numpy_reference_in_one_padded_batch():
    """Five lengths in one batch (so 0.5 s shares the batch with 30 s), float32 vs float64: max |diff| <= 1e-4."""
    waves = clips(SECONDS)
    mels, lengths = log_mel([torch.from_numpy(w) for w in waves])
    assert mels.shape == (len(waves), 80, 3000) and mels.dtype == torch.float32
    assert lengths == [w.size // 160 for w in waves] == [50, 100, 1000, 2999, 3000]
    for i, wave in enumerate(waves):
        expected = reference_log_mel(wave.astype(np.float64))
        np.testing.assert_allclose(mels[i].double().numpy(), expected, rtol=0, atol=1e-4, err_msg=f"clip {i}")


def test_a_clip_s_own_frames_equal_the_published_30s_computation():
    """Computing only frames_needed (a 0.5 s clip: 52 frames, not 3000) keeps the published values and floor: the
    same frames as the 30 s window (float32, |diff| <= 1e-6) and the numpy reference's first frames."""
    waves = [torch.from_numpy(w) for w in clips([0.5, 1.0, 3.33, 29.99, 30.0])] + [torch.zeros(1000)]
    full, _ = log_mel(waves)
    for wave, row in zip(waves, full, strict=True):
        frames = frames_needed(wave.shape[0])
        own, _ = log_mel([wave], frames)
        assert own.shape == (1, 80, frames)
        torch.testing.assert_close(own[0], row[:, :frames], rtol=0, atol=1e-6)
        expected = reference_log_mel(wave.double().numpy())[:, :frames]
        np.testing.assert_allclose(own[0].double().numpy(), expected, rtol=0, atol=1e-4)
    assert [frames_needed(w.shape[0]) for w in waves] == [52, 102, 335, 3000, 3000, 8]
    with pytest.raises(ValueError, match=r"need 52\.\.3000 mel frames"):
        log_mel(waves[:1], 51)


def test_mel_filters_follow_the_slaney_definition():
    """Ours (torch, float64 -> float32) against a filter-by-filter numpy reference and transformers' independent
    `mel_filter_bank` (norm and scale "slaney", librosa's default): both within float32 rounding."""
    ours = mel_filters().double().numpy()
    assert ours.shape == (80, 201)
    reference = slaney_mel_filters()
    hf = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    ).T
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(reference, hf, rtol=1e-9, atol=1e-12)
    # Slaney area normalisation: each triangle has height 2 / (right - left edge in Hz).
    assert (ours > 0).any(axis=1).all()


def test_a_clip_is_the_same_alone_and_in_a_batch_and_floors_are_per_clip():
    """The floor (max - 8) is each clip's own: silence next to a loud clip stays at its own floor."""
    loud = torch.from_numpy(tone(3.0)) * 50
    mels, _ = log_mel([torch.zeros(16000), loud, torch.from_numpy(clips([1.0])[0])])
    alone, _ = log_mel([loud])
    assert torch.equal(mels[0], torch.full_like(mels[0], (-10.0 + 4.0) / 4.0))  # log10(1e-10), floor -18 unused
    torch.testing.assert_close(mels[1], alone[0], rtol=0, atol=1e-6)
    assert mels[1].min() >= mels[1].max() - 2.0 and mels[1].max() > 1.0  # floor at max - 8 in log10 = 2 after /4


def test_more_clips_than_one_pass_change_nothing(monkeypatch):
    waves = [torch.from_numpy(w) for w in clips([0.5, 2.0, 1.0])]
    whole, _ = log_mel(waves)
    monkeypatch.setattr(frontend, "CLIPS_PER_PASS", 2)
    split, _ = log_mel(waves)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


def test_float32_whatever_the_default_dtype():
    """vLLM builds models under a bf16 default dtype; the front end must not follow it."""
    wave = torch.from_numpy(clips([2.0])[0])
    exact, _ = log_mel([wave])
    frontend._TABLES.clear()  # rebuild the window and filters under the bf16 default
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        mels, _ = log_mel([wave])
        window, bank = frontend.tables(torch.device("cpu"))
    finally:
        torch.set_default_dtype(previous)
        frontend._TABLES.clear()
    assert mels.dtype == window.dtype == bank.dtype == torch.float32
    torch.testing.assert_close(mels, exact, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("wave", "message"),
    [(torch.zeros(0), "0 samples"), (torch.zeros(480001), "480001 samples"), (torch.zeros(2, 100), "mono")],
)
def test_bad_waveforms_are_refused(wave, message):
    with pytest.raises(ValueError, match=message):
        log_mel([torch.zeros(1600), wave])
