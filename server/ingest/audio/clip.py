"""Audio ingest: bytes → decoded → mono → 16 kHz float32 → checked against limits.

Everything here is synchronous CPU work; callers run it in the ingest thread pool, never on the event loop.
Every rejection raises a typed error whose ``param`` names the offending request part.

Hostile input: the container is sniffed from the bytes (else taken from the declared format) and only audio
container demuxers ever see client bytes (``audio_sniff``); decoding runs block by block into a streaming
downmix + resampler under sample, time and value caps (``audio_types`` documents each cap and its error code).
"""

from __future__ import annotations

import binascii
import contextlib
import struct
import time

import numpy as np
import pybase64

from server.errors import InvalidAudio, PayloadTooLarge
from server.ingest.audio import wavfix
from server.ingest.audio.decode import DecodeFailed, decode_ffmpeg, decode_soundfile
from server.ingest.audio.limits import TARGET_RATE, AudioLimits, Clip, too_long
from server.ingest.audio.sniff import SOUNDFILE_CONTAINERS, from_declared, sniff

__all__ = [
    "FORMATS",
    "TARGET_RATE",
    "AudioLimits",
    "Clip",
    "decode_audio",
    "decode_base64",
    "decode_data_url",
    "encode_wav",
    "encode_wav_base64",
]


def _b64decode(data: str) -> bytes:
    return pybase64.b64decode(data, validate=True)  # SIMD: several GB/s


def _b64encode(raw: bytes) -> str:
    return pybase64.b64encode_as_string(raw)


FORMATS = frozenset({"wav", "mp3", "flac", "ogg", "oga", "opus", "webm", "m4a", "mp4", "aac", "aiff"})
"""Values accepted in ``input_audio.format``: a hint used when the bytes carry no recognisable magic (the
container the bytes themselves announce wins, so mislabelled clips still decode)."""


# --------------------------------------------------------------------------- transport encodings


def decode_base64(data: str, limits: AudioLimits, param: str) -> bytes:
    if not data:
        raise InvalidAudio("audio data is empty", param=param, code="audio_empty")
    if len(data) > 4 * ((limits.max_bytes + 2) // 3):
        raise PayloadTooLarge(
            f"audio is larger than the {limits.max_bytes} byte limit", param=param, code="audio_too_large"
        )
    try:
        return _b64decode(data)
    except (binascii.Error, ValueError):
        raise InvalidAudio("audio data is not valid base64", param=param, code="invalid_base64") from None


def decode_data_url(url: str, limits: AudioLimits, param: str) -> bytes:
    """``data:audio/wav;base64,<data>`` → bytes."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise InvalidAudio(
            "audio data URL must look like data:audio/<fmt>;base64,<data>", param=param, code="invalid_audio_url"
        )
    return decode_base64(data, limits, param)


def encode_wav(samples: np.ndarray, rate: int = TARGET_RATE) -> bytes:
    """Mono WAV of the samples as they are, nothing lossy: 16-bit PCM for int16 (format tag 1), else IEEE
    float32 (format tag 3). A 44-byte header and the raw samples."""
    if samples.dtype == np.int16:
        data, tag, width = np.ascontiguousarray(samples, dtype="<i2").tobytes(), 1, 2
    else:
        data, tag, width = np.ascontiguousarray(samples, dtype="<f4").tobytes(), 3, 4
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        tag,
        1,
        rate,
        rate * width,
        width,
        8 * width,
        b"data",
        len(data),
    )
    return header + data


def encode_wav_base64(samples: np.ndarray) -> str:
    return _b64encode(encode_wav(samples))


# --------------------------------------------------------------------------- decoding


def decode_audio(raw: bytes, limits: AudioLimits, param: str, fmt: str | None = None) -> Clip:
    """Encoded file bytes → normalised 16 kHz mono clip, or a typed 4xx error.

    ``fmt``: the declared format (``input_audio.format``, a data URL's subtype, an upload's file name), used when
    the bytes do not announce their container. Truncated files are served with the audio present.
    """
    if not raw:
        raise InvalidAudio("audio data is empty", param=param, code="audio_empty")
    if len(raw) > limits.max_bytes:
        raise PayloadTooLarge(
            f"audio is larger than the {limits.max_bytes} byte limit", param=param, code="audio_too_large"
        )
    deadline = time.monotonic() + limits.decode_timeout_s
    demuxer = sniff(raw) or from_declared(fmt)
    if demuxer == "wav":
        raw = wavfix.repair(raw)
    clip = None
    if demuxer in SOUNDFILE_CONTAINERS:
        with contextlib.suppress(DecodeFailed):  # e.g. a truncated FLAC, an MP3 inside a WAV: FFmpeg reads those
            clip = decode_soundfile(raw, limits, param, deadline)
    if clip is None:
        try:
            clip = decode_ffmpeg(raw, demuxer, limits, param, deadline)
        except DecodeFailed:
            raise InvalidAudio(
                "audio could not be decoded: unsupported or corrupt file", param=param, code="invalid_audio"
            ) from None
    if len(clip.samples) == 0:
        raise InvalidAudio("audio contains no samples", param=param, code="audio_empty")
    if clip.seconds > limits.max_seconds:
        raise too_long(clip.seconds, limits, param)
    if clip.seconds < limits.min_seconds:
        raise InvalidAudio(
            f"audio is shorter than the {limits.min_seconds:g} s minimum ({clip.seconds:.3f} s)",
            param=param,
            code="audio_too_short",
        )
    return clip
