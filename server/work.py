"""What a request will cost an engine, as the gateway knows it before any engine sees it: the input to routing
policies and to admission.

Audio is the gateway's own knowledge no other router has: each clip is decoded here, so its exact seconds and
prompt tokens (the model's formula, server/audio_tokens.py) are known, and a hash of its decoded 16 kHz PCM
identifies the same audio however it was sent (base64, data URL, file, another container format).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

AFFINITY_HASH_SAMPLES = 160_000
"""Samples of a clip hashed for its affinity key (10 s at 16 kHz; its length in samples is hashed too): enough to
tell clips apart, at a bounded cost (~0.3 ms) however long the clip."""


@dataclass(frozen=True)
class RequestWork:
    """One request's expected cost to an engine, in tokens, and its audio."""

    audio_seconds: float = 0.0
    """Seconds of audio in the request, every clip."""
    audio_tokens: int = 0
    """Prompt tokens of those clips (the request's model's formula)."""
    text_tokens: int = 0
    """Estimated prompt tokens of its text."""
    output_tokens: int | None = None
    """Tokens it may decode (``max_completion_tokens`` / ``max_tokens``); None: not limited by the request."""
    affinity_key: bytes | None = None
    """Identifies the request's first clip (None: no audio)."""

    @property
    def prefill_tokens(self) -> int:
        return self.audio_tokens + self.text_tokens


NO_WORK = RequestWork()
"""A request the gateway knows nothing about (tests and callers without a prepared request)."""


def audio_key(samples: np.ndarray) -> bytes:
    """A 16-byte key of a decoded 16 kHz mono clip: equal clips give equal keys whatever their encoding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(len(samples).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(samples[:AFFINITY_HASH_SAMPLES], dtype=np.float32).tobytes())
    return digest.digest()
