"""What a request will cost an engine, as the gateway knows it before any engine sees it: the input to routing
policies and to admission.

Audio is the gateway's own knowledge no other router has: each clip is decoded here, so its exact seconds and
prompt tokens (the model's formula, server/families/tokens.py) are known, and a hash of its decoded 16 kHz PCM
identifies the same audio however it was sent (base64, data URL, file, another container format).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

AFFINITY_HASH_SAMPLES = 160_000
"""Samples of a clip hashed for its affinity key (10 s at 16 kHz; its length in samples is hashed too): enough to
tell clips apart, at a bounded cost however long the clip."""


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
    """Tokens it may decode per choice (``max_completion_tokens`` / ``max_tokens``); None: not limited by the
    request."""
    choices: int = 1
    """Sequences it decodes (``n``): the engine decodes each, though the request holds one slot."""
    affinity_key: bytes | None = None
    """Identifies the request's first clip (None: no audio)."""

    @property
    def prefill_tokens(self) -> int:
        return self.audio_tokens + self.text_tokens

    def decode_tokens(self, default_output_tokens: int) -> int:
        """Tokens it may decode, every choice; ``default_output_tokens`` per choice without a limit."""
        per_choice = self.output_tokens if self.output_tokens is not None else default_output_tokens
        return per_choice * self.choices


NO_WORK = RequestWork()
"""A request the gateway knows nothing about (tests and callers without a prepared request)."""


def audio_key(samples: np.ndarray) -> bytes:
    """A 16-byte key of a decoded 16 kHz mono clip: equal clips give equal keys whatever their encoding."""
    # xxh3 over the PCM in place (no copy): 0.01 ms for 10 s of audio where blake2b over a copy took 0.68 ms, a
    # quarter of the gateway's CPU per request in a profile. Not a security boundary: a collision only routes two
    # clips to one engine.
    digest = xxhash.xxh3_128()
    digest.update(len(samples).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(samples[:AFFINITY_HASH_SAMPLES], dtype=np.float32).data)
    return digest.digest()


@dataclass
class EngineWork:
    """This gateway's outstanding work on one engine, in tokens, and its audio: what ``least-work`` compares.

    A request adds its prefill and its decode estimate at ``add``; its prefill leaves at ``first_token`` (the
    engine has done it) and the rest at ``remove`` (told whether ``first_token`` came first). Callers that cannot
    name the request (``work`` None) remove an average request's share; the totals return to zero whenever the
    engine holds none of this gateway's requests, so an estimate never drifts."""

    default_output_tokens: int
    """Decode tokens assumed for a request without ``max_tokens``."""
    prefill: int = 0
    """Prompt tokens (audio + text) of requests whose first token has not come back."""
    decode: int = 0
    """Tokens requests may still decode (their limit: what was generated is not tracked)."""
    audio_seconds: float = 0.0
    """Seconds of audio in requests holding a slot."""
    requests: int = 0

    def output(self, work: RequestWork) -> int:
        return work.decode_tokens(self.default_output_tokens)

    @property
    def tokens(self) -> int:
        return self.prefill + self.decode

    def add(self, work: RequestWork) -> None:
        self.requests += 1
        self.prefill += work.prefill_tokens
        self.decode += self.output(work)
        self.audio_seconds += work.audio_seconds

    def first_token(self, work: RequestWork) -> None:
        self.prefill = max(self.prefill - work.prefill_tokens, 0)

    def remove(self, work: RequestWork | None, prefilled: bool = False) -> None:
        """``prefilled``: ``first_token`` was called for it (its prefill has left already)."""
        if self.requests <= 1:
            self.requests, self.prefill, self.decode, self.audio_seconds = 0, 0, 0, 0.0
            return
        if work is None:  # an average request's share
            share = 1 / self.requests
            self.prefill -= round(self.prefill * share)
            self.decode -= round(self.decode * share)
            self.audio_seconds -= self.audio_seconds * share
        else:
            if not prefilled:
                self.prefill = max(self.prefill - work.prefill_tokens, 0)
            self.decode = max(self.decode - self.output(work), 0)
            self.audio_seconds = max(self.audio_seconds - work.audio_seconds, 0.0)
        self.requests -= 1
