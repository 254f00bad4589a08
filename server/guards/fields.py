"""What a chat request may carry to an engine: no engine-internal request fields, and content parts of exactly
the accepted types with exactly their keys.

Runs on the parsed JSON before the pydantic model (``server/protocol.py``) so that each error names the part and
key at fault (``messages[0].content[1].type``) and never echoes client data at length. vLLM would otherwise infer
a part's kind from its keys: an untyped ``{"audio_url": ...}`` makes the engine itself fetch the URL, a
``uuid`` reuses media cached for another request, and an untyped ``input_audio`` skips every gateway check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from server.errors import InvalidRequest
from server.guards.json_tree import render_path
from server.protocol import AUDIO_PART_TYPES, PART_TYPES

# Request fields of vLLM 0.32's ChatCompletionRequest that reach past the chat: each is refused with a 400.
DENIED_FIELDS: dict[str, str] = {
    "chat_template": "a client-supplied Jinja template",
    "mm_processor_kwargs": "arguments for the engine's multimodal processor",
    "media_io_kwargs": "arguments for the engine's media loaders",
    "kv_transfer_params": "engine-internal KV-transfer parameters",
    "ec_transfer_params": "engine-internal encoder-cache transfer parameters",
    "vllm_xargs": "engine extension arguments",
    "logits_processors": "engine-side logits processor classes",
    "prompt_embeds": "prompt embeddings (the engine deserialises tensors)",
    # It can cut into a clip's placeholder tokens (vLLM 0.32 then fails an assertion: 500), and a prompt the
    # engine may shorten escapes the gateway's context check.
    "truncate_prompt_tokens": "prompt truncation by the engine",
}
# chat_template_kwargs names that would replace what the gateway validated (the template, messages, tools).
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "chat_template",
        "messages",
        "conversation",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "return_dict",
        "return_assistant_tokens_mask",
    }
)
_NON_USER_ROLES = frozenset({"system", "developer", "assistant", "tool"})
_ACCEPTED = ", ".join(PART_TYPES)


@dataclass(frozen=True)
class AudioPart:
    message: int
    part: int
    where: str
    model: BaseModel


def check_request_fields(body: dict[str, Any]) -> None:
    for name, what in DENIED_FIELDS.items():
        if name in body:
            raise InvalidRequest(
                f"'{name}' ({what}) is not accepted by this gateway", param=name, code="unsupported_parameter"
            )
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            param = render_path(("chat_template_kwargs", key))
            if key in RESERVED_TEMPLATE_KWARGS:
                raise InvalidRequest(
                    f"chat_template_kwargs may not set '{key}'", param=param, code="unsupported_parameter"
                )
            if not (value is None or isinstance(value, (str, bool, int, float))):
                raise InvalidRequest(
                    "chat_template_kwargs values must be strings, numbers, booleans or null",
                    param=param,
                    code="unsupported_parameter",
                )


def audio_parts(body: dict[str, Any]) -> list[AudioPart]:
    """Check every content part of every message; return the audio ones in order. Shapes pydantic reports
    better (``messages`` not a list, a message not an object) are left to it."""
    messages = body.get("messages")
    found: list[AudioPart] = []
    if not isinstance(messages, list):
        return found
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            model = check_part(part, where, message.get("role"))
            if model.type in AUDIO_PART_TYPES:  # type: ignore[attr-defined]  # every part model has `type`
                found.append(AudioPart(i, j, where, model))
    return found


def check_part(part: object, where: str, role: object) -> BaseModel:
    if not isinstance(part, dict):
        raise InvalidRequest(
            f"a content part must be an object with a 'type' ({_ACCEPTED})", param=where, code="invalid_content_part"
        )
    kind = part.get("type")
    if kind is None:
        raise InvalidRequest(
            f"content part has no 'type'; use one of {_ACCEPTED}", param=f"{where}.type", code="invalid_content_part"
        )
    if not isinstance(kind, str):
        raise InvalidRequest("content part 'type' must be a string", param=f"{where}.type", code="invalid_content_part")
    model = PART_TYPES.get(kind)
    if model is None:
        raise InvalidRequest(
            f"content part type {quoted(kind)} is not supported; use one of {_ACCEPTED}",
            param=f"{where}.type",
            code="unsupported_content_part",
        )
    if kind in AUDIO_PART_TYPES and role in _NON_USER_ROLES:
        raise InvalidRequest(
            f"'{kind}' parts are accepted in user messages only", param=f"{where}.type", code="unsupported_content_part"
        )
    extra = sorted(str(key) for key in part.keys() - model.model_fields.keys())
    if extra:
        raise InvalidRequest(
            f"unexpected field {quoted(extra[0])} in a '{kind}' content part",
            param=render_path((extra[0],), where),
            code="invalid_content_part",
        )
    try:
        return model.model_validate(part)
    except ValidationError as exc:
        raise validation_error(exc, part, where) from None


def validation_error(exc: ValidationError, data: object, prefix: str = "") -> InvalidRequest:
    """The first pydantic error as a 400 naming the field (``prefix`` + its location in ``data``, the validated
    input: pydantic's location also holds the names of union members tried, e.g. ``content.str``)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    path: list[str | int] = []
    node = data
    for step in first["loc"]:
        if isinstance(node, dict) and step in node:  # noqa: SIM114  # split so mypy narrows `step` per branch
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str) and first["type"] in ("missing", "extra_forbidden"):
            node = None  # a missing or extra key names itself
        else:
            continue  # a union member pydantic tried ("str", "list[...]"), not a place in the input
        path.append(step)
    param = render_path(tuple(path), prefix)
    return InvalidRequest(f"{first['msg']} ({param})" if param else first["msg"], param=param)


def quoted(value: str) -> str:
    """A client string quoted for an error message: escaped and cut."""
    return json.dumps(value[:40] + ("…" if len(value) > 40 else ""))
