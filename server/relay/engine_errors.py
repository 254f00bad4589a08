"""What an engine's error answer says: read at a bound, rebuilt in OpenAI's shape for a client, and whether vLLM
asks for the request to be sent again.

vLLM 0.32 answers a request that ends with ``finish_reason`` "error" with a 500 of a fixed body (``GenerationError``:
type ``InternalServerError``, message ``Internal server error``); its ``FinishReason.ERROR`` is documented as a
"retryable request-level internal error". One cause is its multimodal cache drift: the API server (P0) believed
the engine core (P1) still held a clip and sent it without data; on the miss P1 answers that error and P0 drops
the stale entries (``MultiModalCacheMissError``: "the request should be retried with the multi-modal data
attached"), so the same request sent again to the same engine carries the clip and succeeds there, where routing
chose to send it (its prefix cache may hold the clip). Every other 500 of vLLM carries the failure's own message
(an assertion, a traceback's text) and goes to another engine as before.
"""

from __future__ import annotations

import json

import aiohttp

_ERROR_BODY_BYTES = 64 * 1024
"""Of an engine's error answer, only this much is read (and logged or rebuilt)."""
_MAX_MESSAGE_CHARS = 2000
_MAX_RETRY_AFTER_S = 3600
_RETRYABLE: dict[int, tuple[str, str | None]] = {
    500: ("InternalServerError", "Internal server error"),  # vllm.exceptions.GenerationError
    503: ("ServiceUnavailableError", None),  # vllm.exceptions.RetryableRequestError, whatever its message
}
"""Status → (error type, message or None for any) of vLLM's answers that ask for the same request again."""


def is_retryable(status: int, raw: bytes) -> bool:
    """Whether an engine's error answer is vLLM's retryable request error (module docstring)."""
    expected = _RETRYABLE.get(status)
    if expected is None:
        return False
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return False
    kind, message = expected
    return err.get("type") == kind and (message is None or err.get("message") == message)


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """At most ``_ERROR_BODY_BYTES`` of an answer (the rest is dropped with the connection)."""
    out = bytearray()
    while len(out) < _ERROR_BODY_BYTES:
        chunk = await resp.content.read(_ERROR_BODY_BYTES - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def retry_after(resp: aiohttp.ClientResponse, default: int) -> int:
    value = resp.headers.get("retry-after", "").strip()
    return min(int(value), _MAX_RETRY_AFTER_S) if value.isascii() and value.isdigit() else default


def openai_error_body(status: int, raw: bytes) -> bytes:
    """An engine's 4xx body → ``{"error": {"message", "type", "param", "code"}}`` of strings (or null).

    vLLM answers ``{"error": {...}}`` (older versions a flat ``{"object": "error", ...}``) with its own ``type``
    names and an integer ``code``; anything else (HTML from a proxy, bad JSON) gets a generic message."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        err = doc if isinstance(doc, dict) and doc.get("object") == "error" else {}
    message = err.get("message")
    if not isinstance(message, str) or not message.strip():
        message = f"the engine rejected the request (HTTP {status})"
    param, code = err.get("param"), err.get("code")
    return json.dumps(
        {
            "error": {
                "message": message[:_MAX_MESSAGE_CHARS],
                "type": "invalid_request_error",
                "param": param[:200] if isinstance(param, str) else None,
                "code": code[:100] if isinstance(code, str) and code else "invalid_request",
            }
        }
    ).encode()
