"""Whether a chat request fits the model's context, checked at the gateway before any engine works on it.

vLLM 0.32 refuses a prompt that leaves no room for one output token, and ``max_tokens`` above ``max_model_len``;
it only finds out after rendering the chat and running the audio through its processor. The gateway knows the
audio tokens exactly once clips are decoded (the request's model's formula: server/families/facts.py), and bounds
the text from below, so it refuses such requests first (400 ``context_length_exceeded``, OpenAI's shape and
code) and names the numbers. It also reserves the requested output as OpenAI does: prompt + ``max_tokens`` (or
``max_completion_tokens``) must fit, where vLLM itself would silently clamp the output (``context_reserve_output``
off: vLLM's rule only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.config import Settings
from server.errors import InvalidRequest
from server.families.facts import ModelFacts
from server.families.tokens import AudioTokenCount
from server.guards.output import requested_output

_SPACE = re.compile(r"\s+")
_COUNTED_ROLES = frozenset({"system", "user", "tool"})
"""Roles whose text every chat template renders in full. Assistant turns may be cut (Qwen3's template drops
earlier reasoning) and a ``developer`` message is dropped by Qwen2.5's template, so neither is counted."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


def text_tokens_min(messages: Any, bytes_per_token: int) -> int:
    """A lower bound on the prompt tokens of the messages' text: UTF-8 bytes of non-whitespace characters in the
    text of system, user and tool messages, divided by ``bytes_per_token`` (0 → 0 tokens).

    Why a bound: a byte-level BPE token covers at most its own length in bytes, so no tokenizer whose longest
    vocabulary entry is at most ``bytes_per_token`` bytes can need fewer tokens. Whitespace is left out because
    templates may strip it, and template text (role markers, audio brackets) is not counted at all. The default
    256 is twice the longest entries of the vocabularies in use (tiktoken-style ones reach ~128 bytes); vLLM
    measures the same figure as a tokenizer's ``max_chars_per_token``."""
    if bytes_per_token <= 0 or not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _COUNTED_ROLES:
            continue
        content = message.get("content")
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        for part in parts:
            text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                total += len(_SPACE.sub("", text).encode("utf-8", "surrogatepass"))
    return total // bytes_per_token


@dataclass
class ContextBudget:
    """The tokens of one request counted against ``limit``; ``check()`` raises once they cannot fit."""

    limit: int
    text: int
    """Lower bound on the text tokens."""
    output: tuple[str, int] | None
    """(field, tokens) reserved for the completion; None: only the prompt must leave room for one token."""
    prompt_param: str
    count_audio: AudioTokenCount
    audio: int = 0
    clips: int = 0

    @classmethod
    def of(
        cls,
        body: dict[str, Any],
        settings: Settings,
        max_model_len: int | None,
        *,
        prompt_param: str,
        client_output: bool,
        facts: ModelFacts,
    ) -> ContextBudget | None:
        """The budget of a request (raises at once when text and output alone cannot fit); None: no check
        (turned off, or the model's length unknown; ``truncate_prompt_tokens`` is refused earlier,
        server/guards/fields.py).
        ``client_output``: the request's output fields are the client's (a transcription's are the gateway's).
        ``facts``: the request's model's (its audio-token formula)."""
        if not settings.context_check or max_model_len is None:
            return None
        output = requested_output(body) if client_output else None
        if output is not None and not settings.context_reserve_output and output[1] <= max_model_len:
            output = None  # vLLM's own rule: it shortens the output to what fits
        budget = cls(
            limit=max_model_len,
            text=text_tokens_min(body.get("messages"), settings.context_text_bytes_per_token),
            output=output,
            prompt_param=prompt_param,
            count_audio=facts.count_audio,
        )
        budget.check()
        return budget

    def add_clip(self, n_samples: int) -> None:
        """Count one decoded clip (``n_samples`` at 16 kHz); raises as soon as the request cannot fit."""
        self.audio += self.count_audio(n_samples)
        self.clips += 1
        self.check()

    def check(self) -> None:
        head = f"This model's maximum context length is {self.limit} tokens."
        if self.output is not None and self.output[1] > self.limit:
            name, tokens = self.output
            raise ContextLengthExceeded(f"{head} However, {name} is {tokens}. Please reduce {name}.", param=name)
        prompt = self.audio + self.text
        clips = f"{self.clips} clip" + ("" if self.clips == 1 else "s")
        counts = f"{self.audio} audio tokens in {clips} and at least {self.text} text tokens"
        if prompt >= self.limit:  # vLLM needs room for at least one output token
            raise ContextLengthExceeded(
                f"{head} However, the prompt holds at least {prompt} tokens ({counts}), which leaves no room for "
                "output. Please send shorter or fewer audio clips, or less text.",
                param=self.prompt_param,
            )
        if self.output is not None and prompt + self.output[1] > self.limit:
            name, tokens = self.output
            raise ContextLengthExceeded(
                f"{head} However, you requested at least {prompt + tokens} tokens (at least {prompt} in the messages: "
                f"{counts}; {tokens} in the completion). Please reduce the length of the messages or {name}.",
                param=name,
            )
