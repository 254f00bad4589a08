"""Stream failover after the first byte: what the client has received, and how another engine continues it.

When an engine fails mid-stream, the same request goes to another engine with the text already sent appended
as a final assistant message that vLLM continues (``continue_final_message: true``, ``add_generation_prompt:
false``: the chat template renders that message without closing it) and ``max_tokens`` /
``max_completion_tokens`` less the tokens already produced. The resumed stream's events get the first stream's
``id`` and ``created``, its role delta is dropped, and its usage counts the whole generation: the client sees one
stream.

What the relay does per event is a few ``bytes.find`` calls on vLLM's compact JSON (no parsing): the escaped
``content`` strings are kept and decoded only if a resume needs them. A token is a content delta, as vLLM
streams them; when its API server falls behind, vLLM merges several tokens into one delta, so the count is a
lower bound and a resumed stream may then end up to that many tokens past the client's ``max_tokens``
(``stream_options.continuous_usage_stats`` makes the count exact: each event's usage is used when present).

Only what continues well defined is resumed (``resumable``): one choice, plain text (no tools, logprobs, echo,
token ids, structured output or a client's own continued message). Other streams end with an error event as
before.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

_CONTENT = b'"content":"'
_FINISH = b'"finish_reason":"'
_ROLE = b'"role":"'
_REASONING = b'"reasoning'
_DONE = b"data: [DONE]\n\n"
_TOKEN_ENDS = (b'"finish_reason":null,"token_ids":null}]}\n\n', b'"finish_reason":null}]}\n\n')
"""How vLLM's event of a token (no finish, no usage) ends (0.32; earlier versions)."""
_USAGE = b'"usage":{'
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_BACKSLASH = 0x5C

_UNSUPPORTED = ("tools", "functions", "logprobs", "top_logprobs", "echo", "return_token_ids", "prompt_logprobs")
_STRUCTURED = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
_LIMITS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class Resume:
    """How a stream may be continued on another engine (one per request, built before it is sent)."""

    limit: int | None
    """The request's output token limit (None: the engine's context)."""


def resume_plan(body: dict) -> Resume | None:
    """For a (validated) chat request: how to continue its stream on another engine, or None if it cannot be."""
    return Resume(token_limit(body)) if resumable(body) else None


def resumable(body: dict) -> bool:
    """Whether a stream of this chat request can be continued on another engine."""
    if any(body.get(key) for key in _UNSUPPORTED + _STRUCTURED):
        return False
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
        if type(doc.get(key)) is int:
            doc[key] -= tokens
    if type(doc.get("min_tokens")) is int:
        doc["min_tokens"] = max(doc["min_tokens"] - tokens, 0)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def token_limit(body: dict) -> int | None:
    """The request's output limit (the smaller of ``max_tokens`` / ``max_completion_tokens``), None: none."""
    limits = [value for key in _LIMITS if type(value := body.get(key)) is int]
    return min(limits) if limits else None


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
    """One stream's text and tokens as relayed so far (n == 1), fed every run of whole events (server/sse.py
    ``sse_events``); rewrites the events of a resumed engine to read as the first engine's."""

    __slots__ = ("_first", "_offset", "_swap", "done", "finished", "reasoning", "text", "tokens", "usage_tokens")

    def __init__(self, first: bytes) -> None:
        self.text = bytearray()
        """The content strings sent, still JSON-escaped (decoded only on a resume)."""
        self.tokens = 0
        self.usage_tokens = 0
        """``completion_tokens`` of the latest event with usage (continuous usage stats)."""
        self.finished = False
        """A ``finish_reason`` was sent: the generation is complete (only usage and [DONE] may be missing)."""
        self.done = False
        self.reasoning = False
        """The engine streams reasoning, which this tracker does not keep: not resumable."""
        self._first = _Stamp.of(first)
        self._swap: tuple[_Stamp, _Stamp] | None = None
        self._offset = 0
        self.feed(first)
        if _ROLE in first:
            self.tokens -= 1  # the role delta (content "") is no token

    @property
    def produced(self) -> int:
        return max(self.tokens, self.usage_tokens)

    def feed(self, run: bytes) -> bytes:
        """Track one run of events (a resumed engine's rewritten first); returns what to relay."""
        if self._swap is not None:
            run = self._rewrite(run)
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
        if not run.endswith(_TOKEN_ENDS):  # the usual token event ends so: nothing else to look for
            self._tail(run)
        return run

    def _tail(self, run: bytes) -> None:
        if _FINISH in run:
            self.finished = True
        if _USAGE in run and (found := _COMPLETION_TOKENS.findall(run)):
            self.usage_tokens = int(found[-1])  # a resumed engine's: already the whole generation's (_rewrite)
        if run.endswith(_DONE):
            self.done = True

    def resumable(self) -> bool:
        return self._first is not None and not self.reasoning

    def sent_text(self) -> str:
        return json.loads(b'"' + bytes(self.text) + b'"')

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

    def _rewrite(self, run: bytes) -> bytes:
        new, old = self._swap  # type: ignore[misc]  # set by resumed()
        run = run.replace(new.id, old.id).replace(new.created, old.created)
        if _USAGE in run:
            run = b"".join(_whole_usage(e + b"\n\n", self._offset) for e in run.split(b"\n\n") if e)
        return run

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
