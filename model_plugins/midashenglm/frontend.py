"""Waveforms -> log-mel spectrograms, in pure torch (the Dasheng front end), all clips of a step at once.

Same definition as the published model: centred STFT with reflect padding and a periodic Hann
window, power spectrum, HTK mel filterbank without normalisation, 10*log10 with amin 1e-10 and
a floor of (max - top_db) per clip.

Always float32, whatever the model dtype: the window and filterbank are built here with an
explicit float32 dtype (a bf16 Hann window rounds its first taps to 0 and costs ~1-13 dB of
log-mel error), and they are not module buffers, so no `.to(dtype)` / `.half()` of the model
can cast them.

Batching: the reflect-padded clips are packed end to end into ONE signal (each clip starting on
a hop boundary) and the STFT runs over it in passes of at most STFT_FRAMES_PER_PASS frames (one
pass for up to ~160 s of audio in the step), so a 10-minute clip next to a 2 s one costs its
own frames, not (clips x longest) frames as padding to the longest would, and the spectrum's
memory stays bounded. Each pass's frame count is rounded up to one of a few buckets (`fft_frames`) over the
zeros after the packed signal, so a GPU builds a bounded number of cuFFT plans; the extra frames are dropped.
"""

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from model_plugins.host import host_to_device, to_device

from .config import DashengEncoderConfig

# Frames per STFT pass (~160 s of audio): bounds the front end's memory whatever the step holds.
STFT_FRAMES_PER_PASS = 16 * 1008
MIN_FFT_FRAMES = 256


def fft_frames(frames: int) -> int:
    """Frames one STFT pass transforms for `frames` wanted: rounded up to 2^k or 1.5 x 2^k (at least 256, at most
    STFT_FRAMES_PER_PASS), so cuFFT sees at most 13 batch sizes, hence plans, whatever the clips' lengths (it
    caches plans by size; each new packed length was a new plan). At most 1.5x the frames, 2x under 256."""
    if frames >= STFT_FRAMES_PER_PASS:
        return STFT_FRAMES_PER_PASS
    bucket = MIN_FFT_FRAMES
    while bucket < frames:
        bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3  # 256, 384, 512, 768, ...
    return min(bucket, STFT_FRAMES_PER_PASS)


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_freqs, n_mels), float32 (computed in float64)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


@dataclass
class PackedMels:
    """Every clip's log-mel frames side by side on one time axis.

    mels: (n_mels, total_frames) float32 dB; clip i owns columns
        [frame_offsets[i], frame_offsets[i] + frames[i]); other columns hold junk.
    frame_offsets, frames: host ints, one per clip.
    """

    mels: torch.Tensor
    frame_offsets: list[int]
    frames: list[int]


class LogMelFrontend(nn.Module):
    """list of (samples,) waveforms -> PackedMels; frames_i = samples_i // hop + 1 (centred)."""

    def __init__(self, config: DashengEncoderConfig):
        super().__init__()
        self.config = config
        self.pad = config.n_fft // 2 if config.center else 0
        # float32 tables per device, built on first use; deliberately not buffers (see module doc).
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(window (win_length,) zero-padded to n_fft, filterbank (n_freqs, n_mels)), float32 on `device`."""
        if device not in self._tables:
            c = self.config
            window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float32)
            left = (c.n_fft - c.win_length) // 2  # torch.stft centres a shorter window the same way
            window = F.pad(window, (left, c.n_fft - c.win_length - left))
            bank = mel_filterbank(c.n_fft // 2 + 1, c.f_min, c.f_max, c.n_mels, c.sample_rate)
            self._tables[device] = (host_to_device(window, device), host_to_device(bank, device))
        return self._tables[device]

    def num_frames(self, n_samples: int) -> int:
        c = self.config
        return (n_samples + 2 * self.pad - c.n_fft) // c.hop_length + 1

    def forward(self, waveforms: list[torch.Tensor]) -> PackedMels:
        c, hop = self.config, self.config.hop_length
        device = waveforms[0].device
        lengths = [int(w.shape[-1]) for w in waveforms]  # shapes are host metadata: no device sync
        frames = [self.num_frames(n) for n in lengths]
        if min(frames) < 1:
            raise ValueError(f"audio of {min(lengths)} samples is too short for one mel frame")
        # Each clip's padded segment starts on a hop boundary, so its frames are whole STFT frames.
        segments = [-(-(n + 2 * self.pad) // hop) * hop for n in lengths]
        offsets = [0]
        for size in segments:
            offsets.append(offsets[-1] + size)
        frames_total = offsets[-1] // hop + 1  # up to the last clip's last frame
        # The (n_freqs, frames) spectrum is 4x the size of the mels: bound it by STFT pass. Each pass transforms a
        # bucketed number of frames (fft_frames) so cuFFT meets a bounded set of plans; the extra frames read the
        # zeros after the packed signal and are dropped, so the kept ones are unchanged.
        passes = [
            (first, min(first + STFT_FRAMES_PER_PASS, frames_total))
            for first in range(0, frames_total, STFT_FRAMES_PER_PASS)
        ]
        total = max((first + fft_frames(last - first) - 1) * hop + c.n_fft for first, last in passes)
        signal = torch.zeros(total, dtype=torch.float32, device=device)
        for wave, start, n in zip(waveforms, offsets[:-1], lengths, strict=True):
            wave = wave.reshape(1, -1).float()
            if self.pad:
                if n <= self.pad:
                    raise ValueError(f"audio of {n} samples is too short for reflect padding by {self.pad}")
                wave = F.pad(wave, (self.pad, self.pad), mode="reflect")
            signal[start : start + n + 2 * self.pad].copy_(wave[0])
        window, bank = self.tables(device)
        mel = torch.empty(c.n_mels, frames_total, dtype=torch.float32, device=device)
        for first, last in passes:
            piece = signal[first * hop : (first + fft_frames(last - first) - 1) * hop + c.n_fft]
            spectrum = torch.stft(
                piece, n_fft=c.n_fft, hop_length=hop, window=window, center=False, onesided=True, return_complex=True
            )  # (n_freqs, fft_frames(last - first))
            power = torch.view_as_real(spectrum[:, : last - first]).square().sum(-1)
            torch.matmul(bank.T, power, out=mel[:, first:last])
        log_mel = mel.clamp_(min=1e-10).log10_().mul_(10.0)  # (n_mels, frames_total), in place
        frame_offsets = [start // hop for start in offsets[:-1]]
        return PackedMels(self._floor(log_mel, frame_offsets, frames), frame_offsets, frames)

    def _floor(self, log_mel: torch.Tensor, frame_offsets: list[int], frames: list[int]) -> torch.Tensor:
        """max(log_mel, clip peak - top_db), the peak over each clip's own frames only."""
        total = log_mel.shape[-1]
        clip_of, valid = frame_owners(frame_offsets, frames, total, log_mel.device)
        peaks_per_frame = torch.where(valid, log_mel.amax(dim=0), float("-inf"))
        peaks = torch.full((len(frames),), float("-inf"), device=log_mel.device)
        peaks = peaks.scatter_reduce(0, clip_of, peaks_per_frame, reduce="amax")
        return torch.maximum(log_mel, (peaks - self.config.top_db)[clip_of])


def frame_owners(
    frame_offsets: list[int], frames: list[int], total: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every packed frame: (owning clip index (total,) long, is one of its valid frames (total,) bool).

    Built on the device from 2 x clips host ints (one small copy); no sync, no per-frame host data.
    """
    spans = [b - a for a, b in pairwise([*frame_offsets, total])]
    meta = to_device([spans, frame_offsets, frames], device)  # (3, clips)
    clip_of = torch.repeat_interleave(torch.arange(len(frames), device=device), meta[0], output_size=total)
    local = torch.arange(total, device=device) - meta[1][clip_of]
    return clip_of, local < meta[2][clip_of]
