"""How much output a chat request may ask an engine for: choices, logprobs and tokens, bounded before any audio is
decoded.

An engine counts a request as one slot however many sequences it decodes, and answers a non-streamed request in
one JSON document built in its API server. A security review measured what unbounded fields cost: ``n=256`` with
``logprobs``, ``top_logprobs=20`` and 256 forced tokens took 109 s for a 90 MB answer while the engine's
``/health`` went unanswered for over 10 s; ``n=16384`` held an engine 62 s. So each field is an integer within a
gateway setting, and n × the output limit of a request of several choices is bounded as a whole. The integers are
checked strictly: vLLM's pydantic would turn ``"256"`` or ``true`` into a number where the gateway's checks
(these, and the context budget) would not see one. JSON numbers of integral value (``4000.0``, ``4e3``) are
integers to both, so they are rewritten as such in the body.
"""

from __future__ import annotations

from typing import Any

from server.config import Settings
from server.errors import InvalidRequest

_COUNTS = ("n", "best_of", "top_logprobs", "max_completion_tokens", "max_tokens")


class AnswerTooLarge(InvalidRequest):
    """An engine's non-streamed answer passed ``max_answer_bytes``: the request asked for more than the gateway
    relays in one document. A client error (400): its fields made the answer that large, and streaming, fewer
    choices, logprobs or tokens get it served."""

    code = "answer_too_large"


def check_output_limits(body: dict[str, Any], settings: Settings) -> None:
    """Raise a 400 naming the field when the request asks for more output than the settings allow."""
    for name in _COUNTS:
        value = body.get(name)
        if type(value) is float and value.is_integer():  # finite: the JSON parser refuses the rest
            body[name] = value = int(value)
        if value is not None and type(value) is not int:  # bool is not accepted either
            raise InvalidRequest(f"'{name}' must be an integer", param=name, code="invalid_type")
    for name in ("logprobs", "echo"):  # vLLM would read "yes", 1 or "on" as true
        value = body.get(name)
        if value is not None and type(value) is not bool:
            raise InvalidRequest(f"'{name}' must be a boolean", param=name, code="invalid_type")
    n = _bounded(body, "n", 1, settings.max_n)
    _bounded(body, "best_of", 1, settings.max_n)  # vLLM 0.32's chat ignores it; bounded in case one honours it
    top = _bounded(body, "top_logprobs", 0, settings.max_top_logprobs)  # vLLM reads -1 as the whole vocabulary
    ids = body.get("logprob_token_ids")
    if isinstance(ids, list) and len(ids) > settings.max_top_logprobs:
        raise InvalidRequest(
            f"at most {settings.max_top_logprobs} logprob_token_ids",
            param="logprob_token_ids",
            code="array_above_max_length",
        )
    if body.get("prompt_logprobs") is not None:
        raise InvalidRequest(
            "'prompt_logprobs' (logprobs of every prompt token, audio placeholders included) is not accepted by "
            "this gateway",
            param="prompt_logprobs",
            code="unsupported_parameter",
        )
    if body.get("echo") and top:  # vLLM then returns top_logprobs of every prompt token as prompt logprobs
        raise InvalidRequest(
            "'echo' with 'top_logprobs' (logprobs of every prompt token) is not accepted by this gateway",
            param="echo",
            code="unsupported_parameter",
        )
    for name in ("max_completion_tokens", "max_tokens"):
        _bounded(body, name, 0, None)
    output = requested_output(body)
    name, per_choice = output if output is not None else ("n", settings.routing_output_tokens)
    # One choice is bounded by the model's context (the context check, or the engine's own); n multiplies it.
    if n > 1 and n * per_choice > settings.max_total_output_tokens:
        what = name if output is not None else f"the {per_choice} tokens assumed without max_tokens"
        raise InvalidRequest(
            f"this request may decode n × {what} = {n * per_choice} tokens; the limit is "
            f"{settings.max_total_output_tokens}. Ask for fewer choices or fewer tokens per choice",
            param=name,
            code="too_many_output_tokens",
        )


def choices(body: dict[str, Any]) -> int:
    """Sequences the engine decodes for the request (its ``n``; checked by ``check_output_limits``)."""
    n = body.get("n")
    return n if type(n) is int and n > 0 else 1


def _bounded(body: dict[str, Any], name: str, low: int, high: int | None) -> int:
    """The field's value (``low`` when absent), refused outside ``low``..``high`` with OpenAI's codes."""
    value = body.get(name)
    if value is None:
        return low
    if value < low:
        raise InvalidRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        raise InvalidRequest(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return int(value)


def requested_output(body: dict[str, Any]) -> tuple[str, int] | None:
    """The output tokens asked for and the field that asked, as vLLM reads them (``max_completion_tokens`` wins
    over ``max_tokens``); None when neither is a non-negative integer (the engine judges other values)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        return (name, value) if type(value) is int and value >= 0 else None
    return None
