"""Decoded blocks → one 16 kHz mono clip, block by block: downmix, check and resample each block as it arrives,
so that only the 16 kHz mono result grows (never the source's channels × rate)."""

from __future__ import annotations

import time

import numpy as np
import soxr

from server.errors import InvalidAudio
from server.ingest.audio.limits import MAX_ABS_SAMPLE, TARGET_RATE, AudioLimits, Clip, check_length, check_stream


class Normaliser:
    """Feed ``push((frames, channels) block)`` at the source rate, then ``clip()``.

    ``exact``: the source is 16-bit PCM at 16 kHz mono and blocks are int16: kept as they are (no conversion,
    no checks needed: integers are finite and in range). Otherwise blocks are float (any width) or integers
    already scaled to floats by the decoder.
    Every block is counted against the limits and the decode deadline (``time.monotonic()`` value).
    """

    def __init__(
        self, rate: int, channels: int, limits: AudioLimits, param: str, deadline: float, exact: bool = False
    ) -> None:
        check_stream(rate, channels, limits, param)
        self.rate, self.channels, self.limits, self.param, self.deadline = rate, channels, limits, param, deadline
        self.exact = exact
        self.frames = 0
        self.samples = 0
        self._out: list[np.ndarray] = []
        self._resampler = (
            None if rate == TARGET_RATE or exact else soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32")
        )

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise InvalidAudio(
                f"audio took longer than {self.limits.decode_timeout_s:g} s to decode",
                param=self.param,
                code="audio_decode_timeout",
            )

    def push(self, block: np.ndarray) -> None:
        frames, channels = block.shape
        if frames == 0:
            return
        self.check_deadline()
        if channels != self.channels:  # a stream may change layout mid-way: same caps
            check_stream(self.rate, channels, self.limits, self.param)
        self.frames += frames
        self.samples += frames * channels
        check_length(self.frames, self.samples, self.rate, self.limits, self.param)
        if self.exact:
            self._out.append(block[:, 0])
            return
        mono = block[:, 0] if channels == 1 else _downmix(block)
        self._check_values(mono)
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        self._out.append(mono if self._resampler is None else self._resampler.resample_chunk(mono))

    def _check_values(self, mono: np.ndarray) -> None:
        hi, lo = mono.max(), mono.min()  # NaN propagates into both; two reductions, no temporary
        if hi <= MAX_ABS_SAMPLE and lo >= -MAX_ABS_SAMPLE:
            return
        if not np.isfinite(mono).all():
            raise InvalidAudio("audio contains NaN or infinite samples", param=self.param, code="audio_not_finite")
        raise InvalidAudio(
            f"audio samples reach {max(hi, -lo):.3g}; float audio is nominally within ±1.0 and at "
            f"most ±{MAX_ABS_SAMPLE:g} is accepted",
            param=self.param,
            code="audio_out_of_range",
        )

    def clip(self) -> Clip:
        if self._resampler is not None:
            self._out.append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        dtype = np.int16 if self.exact else np.float32
        samples = np.concatenate(self._out) if self._out else np.zeros(0, dtype)
        self._out = []
        return Clip(np.ascontiguousarray(samples, dtype=dtype), self.rate, self.channels)


def _downmix(block: np.ndarray) -> np.ndarray:
    """(frames, ch) → (frames,) mean. Not a BLAS gemv: OpenBLAS threads it, and with several ingest threads on a
    loaded host that ran 10-20x slower than this (gather the columns, then contiguous adds)."""
    out: np.ndarray = np.add.reduce([block[:, i] for i in range(block.shape[1])])
    out *= out.dtype.type(1.0 / block.shape[1])
    return out
