"""Waveform -> log-mel spectrogram, in pure torch (the Dasheng front end).

Same definition as the published model: centred STFT with reflect padding and a
periodic Hann window, power spectrum, HTK mel filterbank without normalisation,
10*log10 with amin 1e-10 and a floor of (max - top_db) per clip.
"""

import math

import torch
from torch import nn

from .config import DashengEncoderConfig


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_freqs, n_mels)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LogMelFrontend(nn.Module):
    """(samples,) float waveform at `sample_rate` -> (n_mels, frames) log-mel in dB.

    One clip at a time: each clip is padded by its own reflection, so its features
    never depend on what else is in the batch. frames = samples // hop + 1.
    """

    def __init__(self, config: DashengEncoderConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.win_length = config.win_length
        self.hop_length = config.hop_length
        self.center = config.center
        self.top_db = config.top_db
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        self.register_buffer(
            "filterbank",
            mel_filterbank(
                config.n_fft // 2 + 1, config.f_min, config.f_max, config.n_mels, config.sample_rate
            ),
            persistent=False,
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(
            waveform.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),
            center=self.center,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()  # (n_freqs, frames)
        mel = self.filterbank.float().T @ power  # (n_mels, frames)
        log_mel = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        return torch.maximum(log_mel, log_mel.amax() - self.top_db)
