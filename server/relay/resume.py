"""Stream failover after the first byte: what the client has received, and how another engine continues it.

When an engine fails mid-stream, the same request goes to another engine with the text already sent appended
as a final assistant message that vLLM continues (``continue_final_message: true``, ``add_generation_prompt:
false``: the chat template renders that message without closing it) and ``max_tokens`` /
``max_completion_tokens`` less the tokens already produced. The resumed stream's events get the first stream's
``id`` and ``created``, its role delta is dropped, and its usage counts the whole generation: the client sees one
stream.

What the relay does per event is a few ``bytes.find`` calls on vLLM's compact JSON (no parsing): the escaped
``content`` strings are kept and decoded only if a resume needs them. A delta may hold several tokens (a
request's ``stream_interval``, vLLM's ``--stream-interval``, or an API server that fell behind merge them), so
the gateway asks the engine for ``stream_options.continuous_usage_stats`` (``Resume.stream_options``): each
event's usage then says exactly how many tokens were produced, and the usage the client did not ask for is
cut from the events (server/relay/usage.py; ~2.5 µs per event on a shared 2-core development machine, against 0.5 µs
to track an event without usage). Where an engine sends no usage, a delta counts as one token (a lower bound).
``max_tokens`` / ``max_completion_tokens`` are read as vLLM reads them: any JSON number of integral value
(``4000``, ``4000.0``, ``4e3``), the latter winning.

Only what continues well defined is resumed (``resumable``): one choice, plain text (no tools, logprobs, echo,
token ids, structured output or a client's own continued message). Other streams end with an error event as
before.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from server.relay.usage import USAGE_ONLY, without_usage

_CONTENT = b'"content":"'
_FINISH = b'"finish_reason":"'
_ROLE = b'"role":"'
_REASONING = b'"reasoning'
_DONE = b"data: [DONE]\n\n"
_TOKEN_ENDS = (b'"finish_reason":null,"token_ids":null}]}\n\n', b'"finish_reason":null}]}\n\n')
"""How vLLM's event of a token (no finish, no usage) ends (0.32; earlier versions)."""
_USAGE = b'"usage":{'
_COMPLETION_TOKENS = b'"completion_tokens":'
_DIGITS = re.compile(rb"\d+")
_EVENT_END = b"\n\n"
_BACKSLASH = 0x5C

_UNSUPPORTED = ("tools", "functions", "logprobs", "top_logprobs", "echo", "return_token_ids", "prompt_logprobs")
_STRUCTURED = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
_LIMITS = ("max_completion_tokens", "max_tokens")
"""vLLM's order: the first one set is the limit."""
_COUNTS = (*_LIMITS, "min_tokens")


@dataclass(frozen=True)
class Resume:
    """How a stream may be continued on another engine (one per request, built before it is sent)."""

    limit: int | None
    """The request's output token limit (None: the engine's context)."""
    usage: bool = True
    """The client asked for the final usage chunk (``stream_options.include_usage``)."""
    continuous: bool = True
    """The client asked for usage in every event (``stream_options.continuous_usage_stats``)."""
    stream_options: dict[str, Any] | None = None
    """The engine request's ``stream_options`` in place of the client's (exact counts); None: the client's."""


def resume_plan(body: dict[str, Any]) -> Resume | None:
    """For a (validated) chat request: how to continue its stream on another engine, or None if it cannot be."""
    if not resumable(body):
        return None
    options = body.get("stream_options") or {}
    usage, continuous = options.get("include_usage"), options.get("continuous_usage_stats")
    if continuous not in (None, False, True):  # not a plain boolean: the engine judges it, the gateway leaves it
        return Resume(token_limit(body))
    return Resume(
        token_limit(body),
        usage=usage is True,
        continuous=usage is True and continuous is True,
        stream_options={**options, "include_usage": True, "continuous_usage_stats": True},
    )


def resumable(body: dict[str, Any]) -> bool:
    """Whether a stream of this chat request can be continued on another engine."""
    if any(body.get(key) for key in _UNSUPPORTED + _STRUCTURED):
        return False
    if any(body.get(key) is not None and count(body[key]) is None for key in _COUNTS):
        return False  # a limit the gateway cannot read (the engine refuses it, or reads it its own way)
    if (
        body.get("n") not in (None, 1)
        or body.get("continue_final_message")
        or body.get("add_generation_prompt") is False
    ):
        return False
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return False
    messages = body.get("messages")
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)


def resume_body(body: bytes, text: str, tokens: int) -> bytes:
    """The engine request that continues ``text`` (``tokens`` of it generated) of the answer to ``body``."""
    doc = json.loads(body)
    doc["messages"].append({"role": "assistant", "content": text})
    doc["continue_final_message"] = True
    doc["add_generation_prompt"] = False
    for key in _LIMITS:
        if (value := count(doc.get(key))) is not None:
            doc[key] = value - tokens
    if (value := count(doc.get("min_tokens"))) is not None:
        doc["min_tokens"] = max(value - tokens, 0)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def token_limit(body: dict[str, Any]) -> int | None:
    """The request's output limit as vLLM reads it (``max_completion_tokens``, else ``max_tokens``), None: none."""
    for key in _LIMITS:
        if body.get(key) is not None:
            return count(body[key])
    return None


def count(value: object) -> int | None:
    """A token count as JSON may write it (``10``, ``10.0``, ``1e1``: integral); None for anything else."""
    if type(value) is int:  # not bool
        return value
    if type(value) is float and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


@dataclass
class _Stamp:
    """A stream's ``"id":"..."`` and ``"created":N`` members, as bytes."""

    id: bytes
    created: bytes

    @classmethod
    def of(cls, event: bytes) -> _Stamp | None:
        try:
            doc = json.loads(event.partition(b"\n\n")[0].removeprefix(b"data: "))
            return cls(b'"id":' + json.dumps(doc["id"]).encode(), b'"created":%d' % doc["created"])
        except (ValueError, KeyError, TypeError):
            return None


class StreamText:
    """One stream's text and tokens as relayed so far (n == 1), fed every run of whole events (server/relay/sse.py
    ``sse_events``) from ``begin``; rewrites the events of a resumed engine to read as the first engine's, and
    cuts the usage that the gateway asked for and the client did not (``Resume``)."""

    __slots__ = (
        "_cut",
        "_first",
        "_keep_final",
        "_offset",
        "_swap",
        "done",
        "finished",
        "reasoning",
        "text",
        "tokens",
        "usage_tokens",
    )

    def __init__(self, plan: Resume | None = None) -> None:
        self.text = bytearray()
        """The content strings sent, still JSON-escaped (decoded only on a resume)."""
        self.tokens = 0
        """Content deltas (each at least one token)."""
        self.usage_tokens = 0
        """``completion_tokens`` of the latest event with usage, of the whole generation (continuous usage)."""
        self.finished = False
        """A ``finish_reason`` was sent: the generation is complete (only usage and [DONE] may be missing)."""
        self.done = False
        self.reasoning = False
        """The engine streams reasoning, which this tracker does not keep: not resumable."""
        asked = plan if plan is not None and plan.stream_options is not None else None  # the gateway asked usage
        self._cut = asked is not None and not asked.continuous
        """Cut usage from the events with choices: the gateway asked for it, the client did not."""
        self._keep_final = asked is None or asked.usage
        """Relay the usage-only chunk."""
        self._first: _Stamp | None = None
        self._swap: tuple[_Stamp, _Stamp] | None = None
        self._offset = 0

    def begin(self, first: bytes) -> bytes:
        """Track the stream's first run of events; returns what to relay of it."""
        self._first = _Stamp.of(first)
        run = self.feed(first)
        if _ROLE in first:
            self.tokens -= 1  # the role delta (content "") is no token
        return run

    @property
    def produced(self) -> int:
        return max(self.tokens, self.usage_tokens)

    def feed(self, run: bytes) -> bytes:
        """Track one run of events (a resumed engine's rewritten first); returns what to relay."""
        if self._swap is not None:
            new, old = self._swap
            run = run.replace(new.id, old.id).replace(new.created, old.created)
        start = run.find(_CONTENT)
        if start < 0 and _REASONING in run:
            self.reasoning = True
        while start >= 0:
            start += len(_CONTENT)
            end = run.find(b'"', start)
            while end > 0 and run[end - 1] == _BACKSLASH and _escaped(run, end):
                end = run.find(b'"', end + 1)
            if end < 0:  # not JSON as vLLM writes it: stop tracking text here
                break
            self.text += run[start:end]
            self.tokens += 1
            start = run.find(_CONTENT, end)
        if run.endswith(_TOKEN_ENDS):  # the usual token event ends so: nothing else to look for
            return run
        self._tail(run)
        return self._usage(run) if _USAGE in run else run

    def _tail(self, run: bytes) -> None:
        if _FINISH in run:
            self.finished = True
        if _USAGE in run and (at := run.rfind(_COMPLETION_TOKENS)) >= 0:
            found = _DIGITS.match(run, at + len(_COMPLETION_TOKENS))
            if found is not None:
                self.usage_tokens = self._offset + int(found[0])  # a resumed engine's count starts at 0
        if run.endswith(_DONE):
            self.done = True

    def _usage(self, run: bytes) -> bytes:
        """Events with usage: cut what the client did not ask for; a resumed engine's made the whole stream's."""
        if not self._cut and self._swap is None:
            return run
        if run.find(_EVENT_END) == len(run) - 2:  # one event: the usual run
            return self._event_usage(run)
        return b"".join(self._event_usage(e + _EVENT_END) for e in run.split(_EVENT_END) if e)

    def _event_usage(self, event: bytes) -> bytes:
        if _USAGE not in event:
            return event
        if USAGE_ONLY in event:
            if not self._keep_final:
                return b""
        elif self._cut:
            event = without_usage(event)
        return _whole_usage(event, self._offset) if self._swap is not None else event

    def resumable(self) -> bool:
        return self._first is not None and not self.reasoning

    def sent_text(self) -> str:
        text: str = json.loads(b'"' + bytes(self.text) + b'"')  # the escaped content strings, decoded
        return text

    def resumed(self, first: bytes) -> bytes:
        """The first run of events of a resumed engine → what to relay of it (its role delta dropped)."""
        new = _Stamp.of(first)
        if new is None or self._first is None:
            return self.feed(first)
        self._swap = (new, self._first)
        self._offset = self.produced
        events = [e + b"\n\n" for e in first.split(b"\n\n") if e]
        if events and _ROLE in events[0] and b'"content":""' in events[0]:
            events.pop(0)
        return self.feed(b"".join(events)) if events else b""

    def final_chunk(self, finish_reason: str) -> bytes:
        """A closing chunk in the first stream's name (a generation that reached its limit as its engine died)."""
        stamp = self._first
        head = b"{%s,%s" % (stamp.id, stamp.created) if stamp else b'{"created":%d' % int(time.time())
        return (
            b"data: "
            + head
            + b',"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":'
            + json.dumps(finish_reason).encode()
            + b"}]}\n\n"
        )


def _escaped(run: bytes, quote: int) -> bool:
    """Whether the quote at ``quote`` is escaped (preceded by an odd number of backslashes)."""
    i = quote - 1
    while i >= 0 and run[i] == _BACKSLASH:
        i -= 1
    return (quote - 1 - i) % 2 == 1


def _whole_usage(event: bytes, earlier: int) -> bytes:
    """A resumed engine's event with usage → usage of the whole generation: the ``earlier`` tokens generated
    before the resume move from its prompt (they were part of it) to the completion."""
    if _USAGE not in event or not event.startswith(b"data: {"):
        return event
    try:
        doc = json.loads(event[6:])
        usage = doc["usage"]
        usage["completion_tokens"] += earlier
        usage["prompt_tokens"] = max(usage["prompt_tokens"] - earlier, 0)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return event
    return b"data: " + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
