"""What audio ingest produces (``Clip``), the limits it enforces (``AudioLimits``) and the errors they raise.

Caps on what a client may make the gateway decode (``ALM_*`` settings in brackets):

- bytes per clip ``max_bytes`` [MAX_AUDIO_BYTES, 25 MiB] → 413 ``audio_too_large``;
- seconds per clip ``max_seconds`` [MAX_AUDIO_SECONDS, 600] → 400 ``audio_too_long``, and a minimum
  ``min_seconds`` [MIN_AUDIO_SECONDS, 0.2] → 400 ``audio_too_short``;
- channels ``max_channels`` [MAX_AUDIO_CHANNELS, 8: up to 7.1 surround] and source rate 1 kHz to
  ``max_source_rate`` [MAX_AUDIO_SOURCE_RATE, 192 kHz] → 400 ``unsupported_audio_format``;
- decoded samples × channels ``source_sample_budget`` [MAX_AUDIO_SOURCE_SAMPLES; default (max_seconds + 1) ×
  96,000: ten minutes of 48 kHz stereo] → 400 ``audio_too_many_samples``. Checked from the header before
  decoding where the header states the length, and again as blocks are decoded: it bounds a
  decompression bomb's CPU (a few KB of FLAC can declare hours of 8-channel audio);
- decode time ``decode_timeout_s`` [AUDIO_DECODE_TIMEOUT_S, 20 s] → 400 ``audio_decode_timeout``;
- sample values: NaN/inf → 400 ``audio_not_finite``; finite beyond ±``MAX_ABS_SAMPLE`` (1e4, +80 dBFS; float
  PCM is nominally within ±1.0 and headroom above it is forwarded unchanged) → 400 ``audio_out_of_range``.
  Checked on the mono downmix before resampling.

Peak memory per clip is one decoded block (``BLOCK_SAMPLES`` samples across all channels, 1 MiB as float32)
plus the 16 kHz mono result (twice over while the result is joined): it does not grow with the source's rate
or channel count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from server.errors import AudioTooLong, InvalidAudio

if TYPE_CHECKING:
    from server.config import Settings

TARGET_RATE = 16_000
"""MiDashengLM's input rate (Hz)."""

MIN_SOURCE_RATE = 1_000
MAX_SOURCE_RATE = 192_000
MAX_CHANNELS = 8
SOURCE_SAMPLES_PER_SECOND = 96_000
"""Default decode budget per second of ``max_seconds``: 48 kHz stereo."""
DECODE_TIMEOUT_S = 20.0
MAX_ABS_SAMPLE = 1e4
BLOCK_SAMPLES = 1 << 18
"""Samples (all channels together) decoded per block."""


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_seconds: float
    min_seconds: float
    max_channels: int = MAX_CHANNELS
    max_source_rate: int = MAX_SOURCE_RATE
    max_source_samples: int = 0
    """Decoded samples × channels per clip; 0 → ``(max_seconds + 1) × SOURCE_SAMPLES_PER_SECOND``."""
    decode_timeout_s: float = DECODE_TIMEOUT_S

    @property
    def source_sample_budget(self) -> int:
        return self.max_source_samples or int((self.max_seconds + 1) * SOURCE_SAMPLES_PER_SECOND)

    @classmethod
    def of(cls, settings: Settings) -> AudioLimits:
        return cls(
            settings.max_audio_bytes,
            settings.max_audio_seconds,
            settings.min_audio_seconds,
            settings.max_audio_channels,
            settings.max_audio_source_rate,
            settings.max_audio_source_samples,
            settings.audio_decode_timeout_s,
        )


@dataclass(frozen=True)
class Clip:
    """A normalised clip: ``samples`` is (n_samples,) at 16 kHz, mono: int16 when the source already was 16-bit
    PCM at 16 kHz mono (kept exact, half the bytes to forward), else float32, all finite and within
    ±``MAX_ABS_SAMPLE``."""

    samples: np.ndarray
    source_rate: int
    source_channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / TARGET_RATE


def check_stream(rate: int, channels: int, limits: AudioLimits, param: str) -> None:
    """Rate and channel caps, from the header before decoding (and per block: streams may change)."""
    if not MIN_SOURCE_RATE <= rate <= limits.max_source_rate:
        raise InvalidAudio(
            f"unsupported audio sample rate {rate} Hz; accepted: {MIN_SOURCE_RATE} to {limits.max_source_rate} Hz",
            param=param,
            code="unsupported_audio_format",
        )
    if not 1 <= channels <= limits.max_channels:
        raise InvalidAudio(
            f"unsupported audio channel count {channels}; accepted: 1 to {limits.max_channels}",
            param=param,
            code="unsupported_audio_format",
        )


def check_length(frames: int, samples: int, rate: int, limits: AudioLimits, param: str) -> None:
    """Seconds (1 s of slack: the exact check is on the 16 kHz result) and the budget of ``samples`` (frames ×
    channels)."""
    if frames > (limits.max_seconds + 1) * rate:
        raise too_long(frames / rate, limits, param)
    if samples > limits.source_sample_budget:
        raise InvalidAudio(
            f"audio has more than {limits.source_sample_budget} samples across its channels (at "
            f"{rate} Hz); send fewer channels, a lower rate or a shorter clip",
            param=param,
            code="audio_too_many_samples",
        )


def too_long(seconds: float, limits: AudioLimits, param: str) -> AudioTooLong:
    return AudioTooLong(
        f"audio is longer than the {limits.max_seconds:g} s limit ({seconds:.1f} s)", seconds=seconds, param=param
    )
