"""Waveforms -> Whisper log-mel spectrograms (the published Qwen-Audio front end), pure torch, float32.

The published definition (`audio.py` of QwenLM/Qwen-Audio): each clip (16 kHz mono, at most 30 s) is zero-padded
to 30 s (480,000 samples), then a centred STFT (n_fft 400, hop 160, periodic Hann window, reflect padding) gives
3001 frames of which the last is dropped; power spectrum; 80 Slaney-normalised Slaney-scale mel filters (librosa's
`filters.mel(sr=16000, n_fft=400, n_mels=80)`, which the published code ships as `mel_filters.npz`); log10 with a
clamp at 1e-10; floor at (max - 8) over the clip's whole padded spectrogram; (x + 4) / 4. mel_len = samples // 160
frames are real, the rest is padding the encoder masks.

Only the frames a clip needs are computed (`frames_needed`: a 1 s clip is 102 frames, not 3000), and they equal the
published 30 s computation's first frames: see `log_mel`.

Always float32, whatever the model dtype: the window and filter bank are built here in float32 and are not module
buffers, so no `.to(dtype)` of the model can cast them (a bf16 window or filter bank costs whole log-mel units;
see docs/gpu.md and model_plugins/midashenglm/frontend.py).
"""

import math

import torch

from model_plugins.host import host_to_device

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
MAX_SAMPLES = 30 * SAMPLE_RATE
"""Samples of the 30 s window every clip is padded to."""
N_FRAMES = MAX_SAMPLES // HOP_LENGTH
"""Mel frames of the padded window: 3000."""
CLIPS_PER_PASS = 16
"""30 s clips per STFT pass: bounds the (clips, 201, frames) complex spectrum (~4.8 MB per 30 s clip); shorter
passes take proportionally more clips."""

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    log_part = _MIN_LOG_MEL + torch.log(hz.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return torch.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    log_part = _MIN_LOG_HZ * torch.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Slaney-scale triangles with Slaney (area) normalisation over 0..sample_rate/2, shape (n_mels, n_fft // 2 + 1),
    float32 (computed in float64)."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))  # (n_mels + 2,)
    widths = edges[1:] - edges[:-1]
    offsets = edges[:, None] - freqs[None, :]  # (n_mels + 2, n_freqs)
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    return (triangles * area_norm[:, None]).to(torch.float32)


_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(periodic Hann window (400,), mel filters (80, 201)), float32 on `device`; built once per device on the host
    and copied without blocking (host.py)."""
    if device not in _TABLES:
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)
        _TABLES[device] = (host_to_device(window, device), host_to_device(mel_filters(), device))
    return _TABLES[device]


def mel_length(n_samples: int) -> int:
    """Real mel frames of a clip: the published mel_len = samples // 160."""
    return n_samples // HOP_LENGTH


def frames_needed(n_samples: int) -> int:
    """Mel frames to compute for a clip so that they equal the published 30 s computation: every frame whose window
    touches a real sample (frame t covers samples [160 t - 200, 160 t + 200)), so the clip's peak, hence its floor,
    is the published one (the others are exactly log10(1e-10) = -10, never above the peak); at least the 2T frames
    the encoder's convs read (2T <= mel_len + 1 < this); at most 3000."""
    return min(N_FRAMES, -(-(n_samples + N_FFT // 2) // HOP_LENGTH))


def log_mel(waveforms: list[torch.Tensor], frames: int = N_FRAMES) -> tuple[torch.Tensor, list[int]]:
    """list of (samples,) 16 kHz mono waveforms, each 1..480000 samples
    -> (mels (B, 80, frames) float32 on the waveforms' device, mel_lengths: host ints = samples // 160).

    frames: the first mel frames of the published (B, 80, 3000) to compute, at least max(frames_needed); the tower
    asks for its pass's own need (a 1 s clip: 102 frames, not 3000). No device sync: lengths are tensor shapes."""
    if not waveforms:
        raise ValueError("log_mel needs at least one waveform")
    device = waveforms[0].device
    lengths = [int(w.shape[-1]) for w in waveforms]  # shapes are host metadata: no device sync
    for i, (wave, n) in enumerate(zip(waveforms, lengths, strict=True)):
        if wave.dim() != 1:
            raise ValueError(f"waveform {i} has shape {tuple(wave.shape)}, expected (samples,) mono")
        if not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"waveform {i} has {n} samples; the encoder takes 1..{MAX_SAMPLES} (30 s at 16 kHz)")
    need = max(frames_needed(n) for n in lengths)
    if not need <= frames <= N_FRAMES:
        raise ValueError(f"frames={frames}: these clips need {need}..{N_FRAMES} mel frames")
    # Zero padding up to here leaves every kept frame's window inside real or zero samples, as in the published
    # 30 s window: frame frames-1 ends at sample 160 * frames + 40 (only 480,000 itself uses the reflection).
    samples = min(MAX_SAMPLES, HOP_LENGTH * frames + N_FFT // 2)
    window, bank = tables(device)
    mels = torch.empty(len(waveforms), N_MELS, frames, dtype=torch.float32, device=device)
    per_pass = max(1, CLIPS_PER_PASS * N_FRAMES // frames)  # bounds the spectrum as 16 clips of 30 s do
    for first in range(0, len(waveforms), per_pass):
        group = waveforms[first : first + per_pass]
        padded = torch.zeros(len(group), samples, dtype=torch.float32, device=device)
        for row, wave in zip(padded, group, strict=True):
            row[: wave.shape[0]].copy_(wave)
        spectrum = torch.stft(
            padded, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
        )  # (clips, 201, samples // 160 + 1); the published 3001st frame is dropped, as are ours past `frames`
        power = torch.view_as_real(spectrum[..., :frames]).square().sum(-1)
        log_spec = torch.matmul(bank, power).clamp_(min=1e-10).log10_()  # (clips, 80, frames)
        peaks = log_spec.amax(dim=(1, 2), keepdim=True)
        mels[first : first + len(group)] = (torch.maximum(log_spec, peaks - 8.0) + 4.0) / 4.0
    return mels, [mel_length(n) for n in lengths]
