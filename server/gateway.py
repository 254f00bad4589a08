"""The gateway's request flow, shared by the routes: prepare off the event loop, forward, relay.

One ``Gateway`` lives on ``app.state.gateway``, created and closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive

from server.config import Settings
from server.errors import UpstreamError
from server.ingest.fetch import fetch_audio_url
from server.ingest.prepare import ChatJob, finish_chat, parse_chat, transcription_job
from server.ingest.shared_audio import SharedAudioDir
from server.metrics import Metrics
from server.protocol import TranscriptionForm
from server.relay.client import EventStreamResponse, relay_reply, unless_disconnected
from server.relay.engine_stream import Call
from server.relay.resume import Resume, resume_plan
from server.relay.upstream import Upstream, UpstreamReply
from server.relay.usage import audio_seconds_field, with_audio_seconds
from server.routing.backlog import NO_TICKET, Backlog, Ticket
from server.routing.pool import EnginePool, check_served

T = TypeVar("T")
log = logging.getLogger("server.gateway")

CHAT_PATH = "/v1/chat/completions"
_INLINE_BYTES = 32 * 1024


@dataclass(frozen=True)
class RequestContext:
    """What the flow needs of the HTTP request besides its body: when it began (the deadline counts from there),
    its id (logs, the engine's ``X-Request-Id``), and the ASGI receive that tells when the client leaves."""

    start: float
    request_id: str
    receive: Receive


@dataclass(frozen=True)
class Upload:
    """An uploaded audio file: its bytes (within ``max_audio_bytes``) and the name the client gave it (the
    decoder's format hint)."""

    data: bytes
    filename: str | None


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

    async def chat(self, raw_body: bytes, ctx: RequestContext) -> Response:
        job, body, resume = await self._prepare_chat(raw_body)
        start, request_id, receive = ctx.start, ctx.request_id, ctx.receive
        deadline = start + self.settings.request_timeout_s
        usage = audio_seconds_field(job.work.audio_seconds)
        ticket, relaying = NO_TICKET, False
        try:
            ticket = self.backlog.admit(job.model, job.work.audio_seconds)  # 429 audio_backlog beyond the bound
            # Until the answer (or a stream's first event) is here, a client that leaves cancels the work:
            # queued for a slot, waiting for the engine, or retrying.
            if not job.stream:
                reply = await unless_disconnected(
                    self.upstream.post(Call(job.model, CHAT_PATH, body, deadline, request_id, job.work)), receive
                )
                if reply.status == 200:
                    ticket.answered()
                    reply.body = with_audio_seconds(reply.body, usage)
                return relay_reply(reply)
            result = await unless_disconnected(
                self.upstream.stream(Call(job.model, CHAT_PATH, body, deadline, request_id, job.work), resume), receive
            )
            if isinstance(result, UpstreamReply):
                return relay_reply(result)
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

    async def transcribe(self, upload: Upload, form: TranscriptionForm, ctx: RequestContext) -> Response:
        job = transcription_job(upload.data, upload.filename, form, self.settings)
        check_served(job.model, self.pool.known_models())  # before the clip is decoded
        body = await self._ingest(job)
        request_id, receive = ctx.request_id, ctx.receive
        deadline = ctx.start + self.settings.request_timeout_s
        ticket = NO_TICKET
        try:
            ticket = self.backlog.admit(job.model, job.work.audio_seconds)
            reply = await unless_disconnected(
                self.upstream.post(Call(job.model, CHAT_PATH, body, deadline, request_id, job.work)), receive
            )
            if reply.status == 200:
                ticket.answered()
        finally:
            SharedAudioDir.remove(job.files)
            ticket.close()
        if reply.status != 200:
            return relay_reply(reply)
        try:
            text = json.loads(reply.body)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("the engine returned an unexpected answer") from None
        if form.response_format == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})


def _closing(ticket: Ticket, files: list[Path]) -> Callable[[], None]:
    """What ends with a stream's relay: its backlog ticket, and the clip files a resume could have needed."""

    def close() -> None:
        ticket.close()
        SharedAudioDir.remove(files)

    return close


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
