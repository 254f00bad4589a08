"""The ``usage.audio_seconds`` extension: the request's audio seconds in the usage an engine reports.

OpenAI's usage object has no field for audio duration; the openai SDK's ``CompletionUsage`` keeps unknown fields
(its models allow extras: ``completion.usage.audio_seconds`` in Python, ``usage.model_extra``), so clients that do
not know the field ignore it. It is written into the engine's answer as a byte edit, not a JSON round trip: the
engine's JSON (megabytes, when logprobs are asked for) is never parsed again. Cost: about 1 µs per answer of a
typical size (tests/server/relay/test_usage.py prints the measurement).
"""

from __future__ import annotations

_KEY = b'"usage"'
_WHITESPACE = b" \t\r\n"


def audio_seconds_field(audio_seconds: float) -> bytes:
    """The JSON member ``"audio_seconds":<seconds>`` (milliseconds resolution), computed once per request."""
    return b'"audio_seconds":' + repr(round(audio_seconds, 3)).encode()


def with_audio_seconds(doc: bytes, member: bytes) -> bytes:
    """``doc`` (a chat completion, or one SSE event ``data: {...}\\n\\n`` of a stream) with ``member`` (from
    ``audio_seconds_field``) as the first member of its ``usage`` object; ``doc`` itself when it has no usage
    object (``"usage":null``, or none: a stream's chunks before the final usage chunk).

    The key is searched from the end: the usage object follows the choices in vLLM's answers, and ``"usage"``
    followed by a colon outside a string can only be a key (inside a JSON string, quotes are escaped). A usage
    object nested in content (a tool call's arguments) is a string, hence escaped, hence never matched."""
    at = doc.rfind(_KEY)
    while at >= 0:
        i = _skip(doc, at + len(_KEY))
        if i < len(doc) and doc[i] == 0x3A:  # ":"  → it is a key
            i = _skip(doc, i + 1)
            if i < len(doc) and doc[i] == 0x7B:  # "{" → an object
                j = _skip(doc, i + 1)
                sep = b"" if j < len(doc) and doc[j] == 0x7D else b","  # "}" → empty object
                return b"".join((doc[: i + 1], member, sep, doc[i + 1 :]))
        at = doc.rfind(_KEY, 0, at)  # "usage":null, or a string value "usage": look further back
    return doc


def _skip(doc: bytes, i: int) -> int:
    while i < len(doc) and doc[i] in _WHITESPACE:
        i += 1
    return i


USAGE_ONLY = b'"choices":[]'
"""What marks a stream's usage chunk (``stream_options.include_usage``), as vLLM writes it."""
_MEMBER = b',"usage":{'


def without_usage(event: bytes) -> bytes:
    """One SSE event with its ``usage`` member cut (usage of every event, ``continuous_usage_stats``, that the
    gateway asked for and the client did not); the event itself when it has none as vLLM writes it. The member
    is found as in ``with_audio_seconds``; a usage object holds only numbers and objects of numbers, so its end
    is the brace that closes it."""
    at = event.rfind(_MEMBER)
    if at < 0:
        return event
    end, depth = at + len(_MEMBER), 1
    while depth:
        close = event.find(b"}", end)
        if close < 0:
            return event
        depth += event.count(b"{", end, close) - 1
        end = close + 1
    return event[:at] + event[end:]
