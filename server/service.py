"""The gateway's request flow, shared by the routes: prepare off the event loop, forward, relay.

One ``Gateway`` lives on ``app.state.gateway``, created and closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import httpx
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from server.backlog import NO_TICKET, Backlog, Ticket
from server.config import Settings
from server.errors import ModelNotFound, UpstreamError
from server.fetch import fetch_audio_url
from server.metrics import Metrics
from server.prepare import ChatJob, finish_chat, parse_chat, transcription_job
from server.resume import Resume, resume_plan
from server.routing import EnginePool
from server.shared_audio import SharedAudioDir
from server.upstream import EngineStream, Upstream, UpstreamReply
from server.usage import audio_seconds_field, with_audio_seconds
from server.validate import quoted
from server.write_clock import ClientStalled, WriteClock

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
        self.backlog = Backlog(settings, metrics, lambda model: any(model in e.models for e in pool.engines.values()))

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

    async def _prepare_chat(self, raw_body: bytes) -> tuple[ChatJob, bytes, Resume | None]:
        """Parse, check the model (``_planned``), ingest, re-encode with at most one hop to the ingest pool (each
        hop costs ~0.1 ms of CPU); how a stream may resume."""
        failover = self.settings.stream_failover
        if len(raw_body) <= _INLINE_BYTES:  # small JSON parses in microseconds: no hop
            job = parse_chat(raw_body, self.settings)
            resume = _planned(job, self.pool.known_models(), failover)
            if not job.audio:
                return job, finish_chat(job, self.settings, None, self.pool.max_model_len(job.model)), resume
        else:
            # Snapshots: the ingest thread must not read the pool, which the event loop changes.
            known, lengths = self.pool.known_models(), self.pool.max_model_lens()
            job, resume = await self.run_cpu(
                _parse_and_finish, raw_body, self.settings, self.shared, lengths, known, failover
            )
            if job.encoded is not None:
                self._observe(job)
                return job, job.encoded, resume
        return job, await self._ingest(job), resume

    # ------------------------------------------------------------------ chat

    async def chat(self, raw_body: bytes, start: float, request_id: str, receive: Receive) -> Response:
        job, body, resume = await self._prepare_chat(raw_body)
        deadline = start + self.settings.request_timeout_s
        usage = audio_seconds_field(job.work.audio_seconds)
        ticket, relaying = NO_TICKET, False
        try:
            ticket = self.backlog.admit(job.model, job.work.audio_seconds)  # 429 audio_backlog beyond the bound
            # Until the answer (or a stream's first event) is here, a client that leaves cancels the work:
            # queued for a slot, waiting for the engine, or retrying.
            if not job.stream:
                reply = await _unless_disconnected(
                    self.upstream.post(job.model, CHAT_PATH, body, deadline, request_id, job.work), receive
                )
                if reply.status == 200:
                    ticket.answered()
                    reply.body = with_audio_seconds(reply.body, usage)
                return _relay_reply(reply)
            result = await _unless_disconnected(
                self.upstream.stream(job.model, CHAT_PATH, body, deadline, request_id, job.work, resume), receive
            )
            if isinstance(result, UpstreamReply):
                return _relay_reply(result)
            ticket.answered()
            relaying = True
            return EventStreamResponse(
                result,
                request_id,
                self._first_event(job, start, ticket),
                on_close=_closing(ticket, job.files if resume is not None else []),
                usage=usage,
                write_timeout_s=self.settings.client_write_timeout_s,
            )
        finally:
            if not (relaying and resume is not None):  # a resumed stream's engine reads them again
                SharedAudioDir.remove(job.files)  # the engine has read them: its answer or first event is here
            if not relaying:
                ticket.close()  # answered, refused, failed or the client left (a stream's relay closes it)

    def _first_event(self, job: ChatJob, start: float, ticket: Ticket) -> Callable[[], None]:
        def observe() -> None:
            ttft = time.monotonic() - start
            self.metrics.ttft.labels("chat_completions").observe(ttft)
            if ticket.counted:  # audio, for a served model (a bounded label set)
                self.metrics.ttft_per_audio_second.labels(job.model).observe(ttft / job.work.audio_seconds)

        return observe

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
        check_served(job.model, self.pool.known_models())  # before the clip is decoded
        body = await self._ingest(job)
        deadline = start + self.settings.request_timeout_s
        ticket = NO_TICKET
        try:
            ticket = self.backlog.admit(job.model, job.work.audio_seconds)
            reply = await _unless_disconnected(
                self.upstream.post(job.model, CHAT_PATH, body, deadline, request_id, job.work), receive
            )
            if reply.status == 200:
                ticket.answered()
        finally:
            SharedAudioDir.remove(job.files)
            ticket.close()
        if reply.status != 200:
            return _relay_reply(reply)
        try:
            text = json.loads(reply.body)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("the engine returned an unexpected answer") from None
        if response_format == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})


async def _unless_disconnected(
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
        """``usage``: the ``usage.audio_seconds`` member (server/usage.py) written into the usage chunk."""
        events = _with_usage(stream, usage) if usage else stream
        super().__init__(_first_observed(events, on_first_event), media_type="text/event-stream", headers=_SSE_HEADERS)
        self._stream, self._request_id, self._on_close = stream, request_id, on_close
        self._write_timeout_s = write_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        clock = WriteClock(send, self._write_timeout_s)
        try:
            await _unless_disconnected(self.stream_response(clock.send), receive, clock.watch())
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


def _closing(ticket: Ticket, files: list[Path]) -> Callable[[], None]:
    """What ends with a stream's relay: its backlog ticket, and the clip files a resume could have needed."""

    def close() -> None:
        ticket.close()
        SharedAudioDir.remove(files)

    return close


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


def check_served(model: str, known: frozenset[str]) -> None:
    """404 for a model no engine serves (``known``: ``EnginePool.known_models``), before any audio is decoded.
    While no engine's models are known yet (all down since start) the request goes on, and the pool answers
    503 as ``EnginePool.acquire`` decides."""
    if known and model not in known:
        raise ModelNotFound(f"The model {quoted(model)} does not exist", param="model")


def _planned(job: ChatJob, known: frozenset[str], failover: bool) -> Resume | None:
    """Between parsing and decoding: the model check, and how a stream may resume (its engine is then asked for
    exact token counts: ``Resume.stream_options``)."""
    check_served(job.model, known)
    resume = resume_plan(job.body) if job.stream and failover else None
    if resume is not None and resume.stream_options is not None:
        job.body["stream_options"] = resume.stream_options
    return resume


def _parse_and_finish(
    raw_body: bytes,
    settings: Settings,
    shared: SharedAudioDir | None,
    max_model_lens: Mapping[str, int],
    known: frozenset[str],
    failover: bool,
) -> tuple[ChatJob, Resume | None]:
    """In the ingest pool: parse, check, and finish too unless remote URLs must be fetched first."""
    job = parse_chat(raw_body, settings)
    resume = _planned(job, known, failover)
    if not any(ref.url is not None for ref in job.audio):
        job.encoded = finish_chat(job, settings, shared, max_model_lens.get(job.model))
    return job, resume


def _relay_reply(reply: UpstreamReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
