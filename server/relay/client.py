"""The client's side of a relay: an engine's answer as the client's response, an SSE stream that notices a client
that leaves or stops reading, and engine work cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import TypeVar

from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from server.relay.engine_stream import EngineStream
from server.relay.upstream import UpstreamReply
from server.relay.usage import with_audio_seconds
from server.relay.write_clock import ClientStalled, WriteClock

T = TypeVar("T")
log = logging.getLogger("server.relay")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def unless_disconnected(
    work: Awaitable[T], receive: Receive, watchdog: Coroutine[None, None, None] | None = None
) -> T:
    """Await ``work`` unless the client goes away first: then cancel it (closing the engine connection makes
    vLLM abort the request) and raise ClientDisconnect. ``receive`` is the ASGI receive; the body is read.
    ``watchdog``: a coroutine that raises when ``work`` must end (its exception is raised here)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    dog = asyncio.ensure_future(watchdog) if watchdog is not None else None
    waited = {task, watch} if dog is None else {task, watch, dog}
    try:
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waited:
            if not t.done():
                t.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if dog is not None and dog.done() and not dog.cancelled() and (exc := dog.exception()) is not None:
        raise exc
    raise ClientDisconnect()


class EventStreamResponse(StreamingResponse):
    """Relays an engine's SSE stream. Watches for the client leaving even while the engine is silent (not only
    when a write fails) and for a client that stops reading (``write_timeout_s``), and always closes the stream
    however the relay ends: the engine slot is released and an unfinished engine request is aborted."""

    def __init__(
        self,
        stream: EngineStream,
        request_id: str,
        on_first_event: Callable[[], None],
        on_close: Callable[[], None] = lambda: None,
        usage: bytes = b"",
        write_timeout_s: float = 30.0,
    ) -> None:
        """``usage``: the ``usage.audio_seconds`` member (server/relay/usage.py) written into the usage chunk."""
        events = _with_usage(stream, usage) if usage else stream
        super().__init__(_first_observed(events, on_first_event), media_type="text/event-stream", headers=_SSE_HEADERS)
        self._stream, self._request_id, self._on_close = stream, request_id, on_close
        self._write_timeout_s = write_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        clock = WriteClock(send, self._write_timeout_s)
        try:
            await unless_disconnected(self.stream_response(clock.send), receive, clock.watch())
        except ClientStalled:
            # The ASGI server then closes the connection once its buffer drains (or the client leaves).
            log.info(
                "request %s: the client read nothing for %g s; stream ended, engine request aborted",
                self._request_id,
                self._write_timeout_s,
            )
        except (ClientDisconnect, OSError):  # OSError: ASGI servers of spec 2.4 say so from send()
            log.info("request %s: client left during the stream; engine request aborted", self._request_id)
        finally:
            self._stream.close()
            self._on_close()


async def _with_usage(events: AsyncIterable[bytes], usage: bytes) -> AsyncIterator[bytes]:
    async for event in events:
        yield with_audio_seconds(event, usage)


async def _first_observed(events: AsyncIterable[bytes], on_first_event: Callable[[], None]) -> AsyncIterator[bytes]:
    first = True
    async for event in events:
        yield event
        if first:
            on_first_event()
            first = False


def relay_reply(reply: UpstreamReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
