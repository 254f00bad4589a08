"""Per-model audio facts: what the gateway must know about a served model to take its audio honestly.

One table per family (``FAMILIES``); the launcher that has the checkpoint (``alm serve``, alm/families.py) tells
the gateway which family each served model is and what the checkpoint itself says (``ALM_MODEL_FACTS``, JSON:
``{"served-name": "qwen2-audio"}`` or ``{"served-name": {"family": "qwen2-audio", "max_clip_seconds": 30}}``).
A model the setting does not name gets the default family's facts (``ALM_AUDIO_TOKEN_MODEL``, MiDashengLM), as
before per-model facts existed.

A clip longer than ``max_clip_seconds`` is refused (400 ``audio_too_long``) rather than cut: the Whisper-style
feature extractors of Qwen2-Audio (30 s) and Qwen2.5-Omni (300 s) drop everything past their window and the
engine still answers 200. Splitting such clips into consecutive items at the gateway is possible later.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.families.tokens import FORMULAS, AudioTokenCount

GATEWAY_RATE = 16_000
"""The rate the gateway resamples every clip to (server/ingest/audio/limits.py ``TARGET_RATE``)."""


class ModelFacts(BaseModel):
    """What one served model does with audio."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    sample_rate: int = GATEWAY_RATE
    """Input rate of the model's front end (Hz); the gateway resamples to 16 kHz, so only that is accepted."""
    max_clip_seconds: float | None = Field(default=None, gt=0)
    """Longest clip one audio item may hold before the model's processor cuts it; None: no cut (the gateway's
    own ``max_audio_seconds`` still applies)."""
    audio_tokens: str = "midashenglm"
    """Formula for the prompt tokens of one clip (a key of server/families/tokens.py ``FORMULAS``)."""
    audio_placeholder: str = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    """What the chat template writes for one audio item (its middle token is expanded to the audio tokens)."""
    transcription_prompt: str = "Transcribe the audio."
    """Instruction ``/v1/audio/transcriptions`` sends with the clip (``ALM_TRANSCRIPTION_PROMPT`` overrides it)."""

    @field_validator("sample_rate")
    @classmethod
    def _gateway_rate(cls, v: int) -> int:
        if v != GATEWAY_RATE:
            raise ValueError(f"sample_rate {v}: the gateway hands engines {GATEWAY_RATE} Hz audio only")
        return v

    @field_validator("audio_tokens")
    @classmethod
    def _known_formula(cls, v: str) -> str:
        if v not in FORMULAS:
            raise ValueError(f"audio_tokens must be one of {', '.join(FORMULAS)}: {v!r}")
        return v

    @property
    def count_audio(self) -> AudioTokenCount:
        return FORMULAS[self.audio_tokens]


FAMILIES: dict[str, ModelFacts] = {
    "midashenglm": ModelFacts(family="midashenglm"),
    # Whisper feature extractor, chunk_length 30 (vLLM passes truncation=True): a longer clip is cut at 30 s.
    "qwen2-audio": ModelFacts(
        family="qwen2-audio",
        max_clip_seconds=30.0,
        audio_tokens="whisper",
        transcription_prompt="Detect the language and recognize the speech.",
    ),
    # Published preprocessor_config.json chunk_length 300; transformers' processor pads and cuts to it.
    "qwen2.5-omni": ModelFacts(
        family="qwen2.5-omni",
        max_clip_seconds=300.0,
        audio_tokens="whisper",
        transcription_prompt="Transcribe the audio into text.",
    ),
    # Its processor does not truncate (truncation False); the model card: up to 40 minutes of audio.
    "qwen3-omni": ModelFacts(
        family="qwen3-omni",
        max_clip_seconds=2400.0,
        audio_tokens="qwen3-omni",
        audio_placeholder="<|audio_start|><|audio_pad|><|audio_end|>",
        transcription_prompt="Transcribe this audio.",  # vLLM's own transcription prompt for Qwen3-Omni
    ),
    # Our plugin (model_plugins/qwen_audio): a clip over 30 s becomes consecutive <= 30 s spans in the prompt, so
    # nothing is cut (no max_clip_seconds); the context (2048 tokens) bounds a request to ~81 s of audio.
    "qwen-audio-chat": ModelFacts(
        family="qwen-audio-chat",
        audio_tokens="qwen-audio",
        audio_placeholder="Audio 1:<audio></audio>",
        transcription_prompt="What does the person say?",  # the published Qwen-Audio-Chat README's example
    ),
}
"""Family defaults; a checkpoint's own values (alm/families.py ``checkpoint_facts``) override them."""
DEFAULT_CHOICES = (*FAMILIES, "none")
"""Values of ``ALM_AUDIO_TOKEN_MODEL``: the family of models ``ALM_MODEL_FACTS`` does not name; ``none`` →
MiDashengLM's facts with audio counted as 0 tokens."""


def family_facts(name: str) -> ModelFacts:
    """The defaults of ``DEFAULT_CHOICES`` member ``name``."""
    if name == "none":
        return FAMILIES["midashenglm"].model_copy(update={"audio_tokens": "none"})
    return FAMILIES[name]


def parse_facts(value: object) -> dict[str, ModelFacts]:
    """``ALM_MODEL_FACTS`` (a JSON string or already a mapping) → served name → facts. Each entry is a family
    name or an object with ``family`` and any facts that differ from the family's; raises ValueError."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model_facts is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('model_facts must be a JSON object {"served-name": "family" or {"family": ...}}')
    return {str(name): _entry(str(name), entry) for name, entry in value.items()}


def _entry(name: str, entry: Any) -> ModelFacts:
    if isinstance(entry, ModelFacts):
        return entry
    if isinstance(entry, str):
        entry = {"family": entry}
    if not isinstance(entry, dict) or entry.get("family") not in FAMILIES:
        raise ValueError(f"model_facts[{name!r}]: needs a family, one of {', '.join(FAMILIES)}")
    return ModelFacts.model_validate({**FAMILIES[entry["family"]].model_dump(), **entry})
