"""The affinity key of a clip (server/work.py): the same decoded audio gives the same key however it was encoded;
other audio, or the same samples cut shorter, another."""

from __future__ import annotations

import numpy as np

from server.config import load_settings
from server.ingest.audio.clip import AudioLimits, decode_audio
from server.work import AFFINITY_HASH_SAMPLES, audio_key
from tests.support.audio_synth import encode, speechlike


def key_of(data: bytes, fmt: str) -> bytes:
    return audio_key(decode_audio(data, AudioLimits.of(load_settings()), "clip", fmt).samples)


def test_equal_audio_in_other_containers_has_one_key() -> None:
    samples = np.round(np.clip(speechlike(3.0), -1, 0.999) * 32768) / 32768  # on the 16-bit grid: FLAC is exact
    assert key_of(encode(samples, 16_000, "wav"), "wav") == key_of(encode(samples, 16_000, "flac"), "flac")


def test_other_audio_has_another_key() -> None:
    a, b = speechlike(3.0, seed=1), speechlike(3.0, seed=2)
    assert key_of(encode(a, 16_000, "wav"), "wav") != key_of(encode(b, 16_000, "wav"), "wav")


def test_the_length_counts_beyond_the_hashed_samples() -> None:
    long = np.random.default_rng(0).standard_normal(AFFINITY_HASH_SAMPLES + 100).astype(np.float32)
    assert audio_key(long) != audio_key(long[:-50])  # same first 10 s, other lengths
    assert audio_key(long) == audio_key(long.copy()) and len(audio_key(long)) == 16
