"""Per-model audio facts: what the gateway must know about a served model to take its audio honestly.

Each family's defaults (``FAMILIES``) come from its entry in the registry (server/families/registry.py); the
launcher that has the checkpoint (``alm serve``, alm/families.py) tells the gateway which family each served model
is and what the checkpoint itself says (``ALM_MODEL_FACTS``, JSON: ``{"served-name": "qwen2-audio"}`` or
``{"served-name": {"family": "qwen2-audio", "max_clip_seconds": 30}}``).
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

from server.families.registry import BY_NAME, DEFAULT_FAMILY, FORMULAS, ModelFamily
from server.families.tokens import UNCOUNTED, AudioTokenCount

GATEWAY_RATE = 16_000
"""The rate the gateway resamples every clip to (server/ingest/audio/limits.py ``TARGET_RATE``)."""
_DEFAULT = BY_NAME[DEFAULT_FAMILY]


class ModelFacts(BaseModel):
    """What one served model does with audio (a field left out: the default family's, MiDashengLM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    sample_rate: int = GATEWAY_RATE
    """Input rate of the model's front end (Hz); the gateway resamples to 16 kHz, so only that is accepted."""
    max_clip_seconds: float | None = Field(default=None, gt=0)
    """Longest clip one audio item may hold before the model's processor cuts it; None: no cut (the gateway's
    own ``max_audio_seconds`` still applies)."""
    audio_tokens: str = _DEFAULT.formula.name
    """Formula for the prompt tokens of one clip (a key of server/families/registry.py ``FORMULAS``)."""
    audio_placeholder: str = _DEFAULT.audio_placeholder
    """What the chat template writes for one audio item (its middle token is expanded to the audio tokens)."""
    transcription_prompt: str = _DEFAULT.transcription_prompt
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

    @classmethod
    def of(cls, family: ModelFamily) -> ModelFacts:
        """A family's defaults, as its registry entry states them."""
        return cls(
            family=family.name,
            max_clip_seconds=family.max_clip_seconds,
            audio_tokens=family.formula.name,
            audio_placeholder=family.audio_placeholder,
            transcription_prompt=family.transcription_prompt,
        )


FAMILIES: dict[str, ModelFacts] = {name: ModelFacts.of(family) for name, family in BY_NAME.items()}
"""Family defaults; a checkpoint's own values (alm/families.py ``checkpoint_facts``) override them."""
DEFAULT_CHOICES = (*FAMILIES, UNCOUNTED.name)
"""Values of ``ALM_AUDIO_TOKEN_MODEL``: the family of models ``ALM_MODEL_FACTS`` does not name; ``none`` →
MiDashengLM's facts with audio counted as 0 tokens."""


def family_facts(name: str) -> ModelFacts:
    """The defaults of ``DEFAULT_CHOICES`` member ``name``."""
    if name == UNCOUNTED.name:
        return FAMILIES[DEFAULT_FAMILY].model_copy(update={"audio_tokens": UNCOUNTED.name})
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
