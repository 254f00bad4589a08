"""The gateway's request flow, shared by the routes: prepare off the event loop, forward, relay.

One ``Gateway`` lives on ``app.state.gateway``, created and closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import httpx
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from server.config import Settings
from server.errors import UpstreamError
from server.fetch import fetch_audio_url
from server.metrics import Metrics
from server.prepare import ChatJob, finish_chat, parse_chat, transcription_job
from server.routing import EnginePool
from server.shared_audio import SharedAudioDir
from server.upstream import EngineStream, Upstream, UpstreamReply

T = TypeVar("T")
log = logging.getLogger("server.service")

CHAT_PATH = "/v1/chat/completions"
_INLINE_BYTES = 32 * 1024
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Gateway:
    def __init__(
        self,
        settings: Settings,
        pool: EnginePool,
        upstream: Upstream,
        metrics: Metrics,
        client: httpx.AsyncClient,
        executor: ThreadPoolExecutor,
        shared: SharedAudioDir | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.upstream = upstream
        self.metrics = metrics
        self.client = client
        self.executor = executor
        self.shared = shared

    async def run_cpu(self, fn: Callable[..., T], *args: object) -> T:
        """Run CPU-heavy work (JSON of megabytes, audio decode) in the ingest pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _ingest(self, job: ChatJob) -> bytes:
        for ref in job.audio:
            if ref.url is not None:
                ref.raw = await fetch_audio_url(ref.url, ref.param, self.settings, self.client)
        body = await self.run_cpu(finish_chat, job, self.settings, self.shared, self.pool.max_model_len(job.model))
        self._observe(job)
        return body

    def _observe(self, job: ChatJob) -> None:
        if job.clip_seconds:
            self.metrics.ingest_duration.observe(job.ingest_seconds)
            for seconds in job.clip_seconds:
                self.metrics.audio_input.observe(seconds)

    async def _prepare_chat(self, raw_body: bytes) -> tuple[ChatJob, bytes]:
        """Parse, ingest, re-encode with at most one hop to the ingest pool (each hop costs ~0.1 ms of CPU)."""
        if len(raw_body) <= _INLINE_BYTES:  # small JSON parses in microseconds: no hop
            job = parse_chat(raw_body, self.settings)
            if not job.audio:
                return job, finish_chat(job, self.settings, None, self.pool.max_model_len(job.model))
        else:
            # A snapshot: the ingest thread must not read the pool, which the event loop changes.
            lengths = self.pool.max_model_lens()
            job = await self.run_cpu(_parse_and_finish, raw_body, self.settings, self.shared, lengths)
            if job.encoded is not None:
                self._observe(job)
                return job, job.encoded
        return job, await self._ingest(job)

    # ------------------------------------------------------------------ chat

    async def chat(self, raw_body: bytes, start: float, request_id: str, receive: Receive) -> Response:
        job, body = await self._prepare_chat(raw_body)
        deadline = start + self.settings.request_timeout_s
        try:
            # Until the answer (or a stream's first event) is here, a client that leaves cancels the work:
            # queued for a slot, waiting for the engine, or retrying.
            if not job.stream:
                return _relay_reply(
                    await _unless_disconnected(
                        self.upstream.post(job.model, CHAT_PATH, body, deadline, request_id, job.work), receive
                    )
                )
            result = await _unless_disconnected(
                self.upstream.stream(job.model, CHAT_PATH, body, deadline, request_id, job.work), receive
            )
        finally:
            SharedAudioDir.remove(job.files)  # the engine has read them: its answer or first event is here
        if isinstance(result, UpstreamReply):
            return _relay_reply(result)
        return EventStreamResponse(
            result, request_id, lambda: self.metrics.ttft.labels("chat_completions").observe(time.monotonic() - start)
        )

    # ------------------------------------------------------------------ transcriptions

    async def transcribe(
        self,
        raw: bytes,
        filename: str | None,
        model: str,
        prompt: str | None,
        language: str | None,
        response_format: Literal["json", "text"],  # TranscriptionForm has checked it
        temperature: float | None,
        start: float,
        request_id: str,
        receive: Receive,
    ) -> Response:
        job = transcription_job(raw, filename, model, prompt, language, temperature, self.settings)
        body = await self._ingest(job)
        deadline = start + self.settings.request_timeout_s
        try:
            reply = await _unless_disconnected(
                self.upstream.post(job.model, CHAT_PATH, body, deadline, request_id, job.work), receive
            )
        finally:
            SharedAudioDir.remove(job.files)
        if reply.status != 200:
            return _relay_reply(reply)
        try:
            text = json.loads(reply.body)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("the engine returned an unexpected answer") from None
        if response_format == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})


async def _unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work`` unless the client goes away first: then cancel it (closing the engine connection makes
    vLLM abort the request) and raise ClientDisconnect. ``receive`` is the ASGI receive; the body is read."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnect()


class EventStreamResponse(StreamingResponse):
    """Relays an engine's SSE stream. Watches for the client leaving even while the engine is silent (not only
    when a write fails), and always closes the stream however the relay ends: the engine slot is released and
    an unfinished engine request is aborted."""

    def __init__(self, stream: EngineStream, request_id: str, on_first_event: Callable[[], None]) -> None:
        super().__init__(_first_observed(stream, on_first_event), media_type="text/event-stream", headers=_SSE_HEADERS)
        self._stream, self._request_id = stream, request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _unless_disconnected(self.stream_response(send), receive)
        except (ClientDisconnect, OSError):  # OSError: ASGI servers of spec 2.4 say so from send()
            log.info("request %s: client left during the stream; engine request aborted", self._request_id)
        finally:
            self._stream.close()


async def _first_observed(events: AsyncIterable[bytes], on_first_event: Callable[[], None]) -> AsyncIterator[bytes]:
    first = True
    async for event in events:
        yield event
        if first:
            on_first_event()
            first = False


def _parse_and_finish(
    raw_body: bytes, settings: Settings, shared: SharedAudioDir | None, max_model_lens: Mapping[str, int]
) -> ChatJob:
    """In the ingest pool: parse, and finish too unless remote URLs must be fetched first."""
    job = parse_chat(raw_body, settings)
    if not any(ref.url is not None for ref in job.audio):
        job.encoded = finish_chat(job, settings, shared, max_model_lens.get(job.model))
    return job


def _relay_reply(reply: UpstreamReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
