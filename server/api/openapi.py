"""The OpenAPI description of the bodies the routes read themselves (they parse raw bytes, so FastAPI cannot see
them): the chat completions JSON and the transcriptions multipart form, made from the same pydantic models that
validate them (``server/protocol.py``), and OpenAI's error shape for every 4xx/5xx.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.protocol import ChatCompletionRequest, ErrorResponse, Transcription, TranscriptionForm

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Refused request (OpenAI error shape; `param` names the field)"},
    "5XX": {"model": ErrorResponse, "description": "Engine unavailable, failed or timed out (OpenAI error shape)"},
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` substituted in place: route ``openapi_extra`` cannot add
    components. Discriminator mappings (which point into ``$defs``) are dropped; the ``const`` of each
    ``type`` still tells the variants apart."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def chat_openapi() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(ChatCompletionRequest)}},
        }
    }


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The engine's chat completion, or its server-sent events when `stream` is true",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
}


def transcription_openapi() -> dict[str, Any]:
    form = inline_schema(TranscriptionForm)
    form["properties"] = {
        "file": {"type": "string", "format": "binary", "description": "The audio file."},
        **form["properties"],
    }
    form["required"] = ["file", *form.get("required", [])]
    form.pop("additionalProperties", None)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript: JSON by default, plain text with `response_format=text`",
        "content": {
            "application/json": {"schema": inline_schema(Transcription)},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
}
