"""Pydantic models of the OpenAI request shapes the gateway inspects, and the response shapes it builds.

Fields the gateway does not inspect pass through to the engine untouched (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputAudio(BaseModel):
    data: str
    format: str


class InputAudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(_Open):
    url: str


class AudioURLPart(_Open):
    type: Literal["audio_url"]
    audio_url: AudioURL


class Message(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


AUDIO_PART_TYPES = {"input_audio": InputAudioPart, "audio_url": AudioURLPart}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "alm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Transcription(BaseModel):
    text: str
