"""An engine's SSE stream relayed to the client, continued on another engine if the engine fails mid-stream
(server/relay/resume.py says how; server/relay/upstream.py opens the streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from server.errors import GatewayError, UpstreamError
from server.relay.resume import Resume, StreamText
from server.relay.sse import EventTooLarge, sse_error
from server.routing import Engine
from server.work import RequestWork

TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a failed engine call raises (aiohttp's timeouts are both)."""


@dataclass
class Call:
    """One client request to engines, as each attempt sends it."""

    model: str
    path: str
    body: bytes
    deadline: float
    request_id: str
    work: RequestWork


@dataclass
class Leg:
    """One engine's stream of a request: its slot, connection, first run of events and the rest."""

    engine: Engine
    resp: aiohttp.ClientResponse
    first: bytes
    events: AsyncIterator[bytes]


class StreamCaller(Protocol):
    """What a stream needs from whoever calls engines (server/relay/upstream.py ``Upstream``): to continue it on
    another engine, to hand back a leg's slot, and to be told what went wrong (for its logs and metrics)."""

    async def reopen(self, call: Call, text: StreamText, tried: set[str]) -> Leg | None: ...

    def release(self, leg: Leg, work: RequestWork) -> None: ...

    def stream_broke(self, leg: Leg | None, exc: BaseException, request_id: str) -> GatewayError: ...

    def stream_event_too_large(self, engine_name: str, request_id: str, exc: EventTooLarge) -> None: ...

    def count_resume(self, outcome: str) -> None: ...


class EngineStream:
    """The whole SSE events of a stream, after its engine's first. Holds an engine's slot and connection until
    ``close()``, which whoever relays it must call however the relay ends (``close`` is synchronous so it also
    runs in a cancelled scope); an unfinished stream's connection is closed, which makes vLLM abort.

    If the engine fails mid-stream (a transport error, or the stream ends without ``[DONE]``) and the stream
    has a ``Resume``, the failed engine's connection is closed and its slot released, then the generation
    continues on another engine (at most ``max_attempts`` engines per request in all); else, or when none can
    continue it, the client's stream ends with one SSE ``error`` event."""

    def __init__(self, caller: StreamCaller, call: Call, leg: Leg, tried: set[str], resume: Resume | None) -> None:
        self._caller, self._call, self._tried = caller, call, tried
        self._leg: Leg | None = leg
        self._resume = resume
        self._text = StreamText(resume) if resume is not None else None
        if self._text is not None:
            leg.first = self._text.begin(leg.first)
        self._complete = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    async for run in self._relay():
                        yield run
                except TRANSPORT_ERRORS as exc:
                    failure: BaseException = exc
                except EventTooLarge as exc:  # the engine is fine; this answer is not relayable
                    self._caller.stream_event_too_large(self._engine_name(), self._call.request_id, exc)
                    yield sse_error(UpstreamError("the engine sent a stream event too large to relay"))
                    return
                else:
                    if self._text is None or self._text.done:
                        self._complete = True
                        return
                    failure = aiohttp.ServerDisconnectedError("the stream ended without [DONE]")
                error = self._caller.stream_broke(self._leg, failure, self._call.request_id)
                if self._text is None or self._resume is None or isinstance(failure, TimeoutError):
                    yield sse_error(error)
                    return
                async for run in self._resume_or_end(self._text, self._resume, error):
                    yield run
                if self._leg is None:  # ended (finished, or no engine could continue it)
                    return
        finally:
            self.close()

    async def _relay(self) -> AsyncIterator[bytes]:
        leg, text = self._leg, self._text
        if leg is None:
            return
        first, leg.first = leg.first, b""
        if text is None:
            yield first
            async for run in leg.events:
                yield run
            return
        if first:
            yield first
        async for run in leg.events:
            if run := text.feed(run):  # empty: only usage the client did not ask for
                yield run

    async def _resume_or_end(self, text: StreamText, resume: Resume, error: GatewayError) -> AsyncIterator[bytes]:
        """After a failure: continue on another engine (``self._leg`` set), or finish the client's stream."""
        self._close_leg()  # never on two engines at once: the failed one is aborted and released first
        if text.finished:  # the engine died after the last token: only usage and [DONE] are missing
            yield _DONE
            return
        left = None if resume.limit is None else resume.limit - text.produced
        if left is not None and left <= 0:
            yield text.final_chunk("length") + _DONE
            return
        if not text.resumable():
            self._caller.count_resume("failed")
            yield sse_error(error)
            return
        try:
            leg = await self._caller.reopen(self._call, text, self._tried)
        except GatewayError as exc:
            leg, error = None, exc
        if leg is None:
            self._caller.count_resume("failed")
            yield sse_error(error)
            return
        self._caller.count_resume("resumed")
        self._leg = leg
        leg.first = text.resumed(leg.first)

    def _engine_name(self) -> str:
        return self._leg.engine.name if self._leg is not None else "-"

    def _close_leg(self) -> None:
        leg: Leg | None = self._leg
        self._leg = None
        if leg is None:
            return
        if self._complete:
            leg.resp.release()  # read to the end: the connection goes back to the pool
        else:
            leg.resp.close()
        self._caller.release(leg, self._call.work)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_leg()


_DONE = b"data: [DONE]\n\n"
