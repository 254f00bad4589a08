"""Pydantic models of the OpenAI request shapes the gateway accepts, and the response shapes it builds.

Content parts are strict (``extra="forbid"``): vLLM infers a part's kind from its keys (an ``audio_url`` key
on a ``text`` part, a part without ``type``, a ``uuid`` that points at cached media), so a part carries exactly
the keys of its type. Other request and message fields pass through to the engine (``extra="allow"``), except
the engine-internal ones in ``server/guards/fields.py``. These models also make the published OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Closed):
    type: Literal["text"]
    text: StrictStr


class InputAudio(_Closed):
    data: StrictStr = Field(description="Base64 of the encoded clip.")
    format: StrictStr = Field(description="Container hint: wav, mp3, flac, ogg, opus, webm, m4a, aac, aiff.")


class InputAudioPart(_Closed):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(_Closed):
    url: StrictStr = Field(description="A data:audio/<fmt>;base64,... URL, or http(s) when the gateway allows it.")


class AudioURLPart(_Closed):
    type: Literal["audio_url"]
    audio_url: AudioURL


ContentPart = Annotated[TextPart | InputAudioPart | AudioURLPart, Field(discriminator="type")]

PART_TYPES: dict[str, type[BaseModel]] = {"text": TextPart, "input_audio": InputAudioPart, "audio_url": AudioURLPart}
AUDIO_PART_TYPES: dict[str, type[BaseModel]] = {"input_audio": InputAudioPart, "audio_url": AudioURLPart}


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(_Open):
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: dict[str, StrictStr | bool | int | float | None] | None = None
    # Bounded by the gateway's settings before this model sees them (server/guards/output.py,
    # server/guards/structured.py); declared so that the OpenAPI schema, and the fuzzers reading it, know them.
    n: StrictInt | None = None
    best_of: StrictInt | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None


class TranscriptionForm(BaseModel):
    """The text fields of a multipart transcription request (the ``file`` part is checked on its own); other
    OpenAI fields (``timestamp_granularities[]``, ...) are ignored."""

    model: StrictStr = Field(min_length=1)
    prompt: StrictStr | None = None
    language: StrictStr | None = None
    response_format: Literal["json", "text"] = "json"
    temperature: float | None = Field(None, ge=0, le=2)


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
