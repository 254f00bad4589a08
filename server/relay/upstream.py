"""Calls to engines: retries on other engines, stream failover, upstream close on client disconnect.

Non-streamed requests (``post``): nothing reaches the client before the engine's whole answer is in hand, so
an engine that fails at any point (refuses the connection, answers 429 or 5xx, or drops the connection
mid-generation) has the whole request re-sent to another engine, from scratch, up to ``max_attempts`` engines.
The failed engine's connection is closed (vLLM aborts its request) and its slot released before the next try:
a request never runs on two engines at once. The deadline (``request_timeout_s``) is never retried: a read
that waits that long answers 504. vLLM's retryable 500 (server/relay/engine_errors.py) is first sent again to the
same engine, once. A success larger than ``max_answer_bytes`` is not read on: the client gets a 400
``answer_too_large`` (its request asked for that much), the engine's connection is closed and the engine is not
blamed.

Streams (``stream``): the same until the first SSE event has arrived. After that (server/relay/engine_stream.py), a
stream whose engine fails resumes on another engine with the text already sent (server/relay/resume.py,
``ALM_STREAM_FAILOVER``) within the same ``max_attempts``; a stream that cannot resume ends with one final SSE
``error`` event so clients never hang.

What reaches the client of an engine's answer: a 2xx (and a stream) verbatim; a 4xx (a client error) rebuilt
in OpenAI's error shape from the engine's body; nothing of a 5xx (the gateway's own 502 instead: tracebacks and
internals stay in the log). A 429 or a 5xx is tried on another engine; if every engine tried was busy, the
client gets a 429 with ``Retry-After``.

Engine traffic goes through one aiohttp session: it costs ~0.15 ms of CPU per proxied request where httpx costs
~0.7 ms (bench/gateway), and the gateway's CPU per request is what its throughput ratio hangs on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from server.config import Settings
from server.errors import GatewayError, GatewayTimeout, NoHealthyEngine, Overloaded, UpstreamError
from server.guards.output import AnswerTooLarge
from server.metrics import Metrics
from server.relay.engine_errors import is_retryable, openai_error_body, read_capped, retry_after
from server.relay.engine_stream import TRANSPORT_ERRORS, Call, EngineStream, Leg
from server.relay.resume import Resume, StreamText, resume_body
from server.relay.sse import EventTooLarge, sse_events
from server.routing import Engine, EnginePool
from server.work import RequestWork

log = logging.getLogger("server.relay.upstream")

_ENGINE_AUTH = frozenset({401, 403, 407})
"""4xx that say the gateway (not the client) is misconfigured for that engine: another engine may take it."""
_INLINE_BODY = 64 * 1024
"""A resumed request's body is rebuilt in a worker thread beyond this size."""


@dataclass
class UpstreamReply:
    """A complete (non-streamed) engine answer to relay: a 2xx verbatim, or a 4xx rebuilt in OpenAI's shape."""

    status: int
    body: bytes
    content_type: str


def engine_session() -> aiohttp.ClientSession:
    """The pooled HTTP client for engine traffic (requests and health checks); unbounded, kept-alive."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30))


def _kind(exc: BaseException) -> str:
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)):
        return "connect"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):  # closed without (all of) an answer
        return "protocol"
    return "read"


@dataclass
class _Attempts:
    """What the engines tried so far said, to pick the client's answer when none could take the request."""

    retry_after_s: list[int] = field(default_factory=list)  # one per engine that answered 429

    def error(self) -> GatewayError:
        if self.retry_after_s:  # the request may well succeed later: say so rather than "failed"
            return Overloaded(
                "every engine serving the model is at capacity; retry later", retry_after_s=min(self.retry_after_s)
            )
        return UpstreamError("no engine could complete the request")


class Upstream:
    def __init__(self, settings: Settings, pool: EnginePool, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._settings = settings
        self._pool = pool
        self._session = session
        self._metrics = metrics

    def _timeout(self, deadline: float) -> aiohttp.ClientTimeout:
        """Up to the deadline to connect and for each read (a stream may outlive it while events keep coming)."""
        remaining = max(deadline - time.monotonic(), 0.001)
        return aiohttp.ClientTimeout(
            total=None, connect=min(self._settings.connect_timeout_s, remaining), sock_read=remaining
        )

    @staticmethod
    def _headers(request_id: str) -> dict[str, str]:
        # vLLM adopts X-Request-Id as its own id: keep ours as the prefix (log correlation) but make it unique,
        # since a client-chosen id may repeat across concurrent requests.
        return {"content-type": "application/json", "x-request-id": f"{request_id}-{secrets.token_hex(4)}"}

    async def _engines(
        self, model: str, deadline: float, work: RequestWork, tried: set[str] | None = None
    ) -> AsyncIterator[Engine]:
        """Yield distinct engines not in ``tried`` (each added to it, and holding a slot the caller must release)
        until ``max_attempts`` engines have been tried."""
        tried = set() if tried is None else tried
        while len(tried) < self._settings.max_attempts:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    engine = await self._pool.acquire(model, frozenset(tried), work)
            except TimeoutError:
                raise GatewayTimeout("the request timed out waiting for a free engine") from None
            except NoHealthyEngine:
                if not tried:
                    raise
                return
            if tried:
                self._metrics.retries.inc()
            tried.add(engine.url)
            yield engine

    def _failed(self, engine: Engine, exc: BaseException, request_id: str) -> None:
        kind = _kind(exc)
        self._metrics.upstream_errors.labels(kind).inc()
        log.warning("request %s: engine %s failed (%s: %s)", request_id, engine.name, kind, exc)
        if kind in ("connect", "protocol", "read"):
            self._pool.suspect(engine, f"{kind} error")

    async def _refused(
        self, engine: Engine, resp: aiohttp.ClientResponse, attempts: _Attempts, request_id: str
    ) -> UpstreamReply | None:
        """An answer that is not a success (for a stream: not a 200): a client error to relay (returned), or a
        reason to try another engine (None)."""
        return self._judge(engine, resp, await read_capped(resp), attempts, request_id)

    def _judge(
        self, engine: Engine, resp: aiohttp.ClientResponse, body: bytes, attempts: _Attempts, request_id: str
    ) -> UpstreamReply | None:
        """``_refused`` for an error answer already read."""
        status = resp.status
        if 400 <= status < 500 and status != 429 and status not in _ENGINE_AUTH:
            return UpstreamReply(status, openai_error_body(status, body), "application/json")
        if status == 429:
            self._metrics.upstream_errors.labels("status_429").inc()
            attempts.retry_after_s.append(retry_after(resp, self._settings.retry_after_s))
            log.info("request %s: engine %s is busy (429)", request_id, engine.name)
            return None
        self._metrics.upstream_errors.labels("status_5xx" if status >= 500 else "status_other").inc()
        log.warning("request %s: engine %s answered %s: %.500r", request_id, engine.name, status, body)
        return None

    # --- what an EngineStream needs (server/relay/engine_stream.py StreamCaller) ---
    def release(self, leg: Leg, work: RequestWork) -> None:
        self._pool.release(leg.engine, work, prefilled=True)

    def count_resume(self, outcome: str) -> None:
        self._metrics.stream_resumes.labels(outcome).inc()

    def stream_broke(self, leg: Leg | None, exc: BaseException, request_id: str) -> GatewayError:
        """An engine's stream failed after its first event: count and log it, suspect the engine (unless the
        deadline passed); the error the client's stream ends with if it cannot go on."""
        self._metrics.upstream_errors.labels("stream_interrupted").inc()
        name = leg.engine.name if leg is not None else "-"
        log.warning("request %s: stream from engine %s broke: %r", request_id, name, exc)
        if isinstance(exc, TimeoutError):
            return GatewayTimeout("the request timed out")
        if leg is not None:
            self._pool.suspect(leg.engine, "stream interrupted")
        return UpstreamError("the engine stream was interrupted")

    def stream_event_too_large(self, engine_name: str, request_id: str, exc: EventTooLarge) -> None:
        self._metrics.upstream_errors.labels("event_too_large").inc()
        log.warning("request %s: engine %s: %s", request_id, engine_name, exc)

    async def reopen(self, call: Call, text: StreamText, tried: set[str]) -> Leg | None:
        """Continue a stream on an engine not tried yet, from the text it has sent; None: no engine could."""
        body = call.body
        if text.produced or text.text:
            args = (call.body, text.sent_text(), text.produced)
            # A body with inline audio is megabytes of JSON: (de)serialise it off the event loop.
            body = await asyncio.to_thread(resume_body, *args) if len(body) > _INLINE_BODY else resume_body(*args)
        # The request's deadline bounds the wait for its first byte, long sent: the resumed engine's first event
        # gets a deadline of its own, as a new request would.
        call = dataclasses.replace(call, deadline=time.monotonic() + self._settings.request_timeout_s)
        opened = await self._open(call, body, tried, _Attempts())
        if isinstance(opened, UpstreamReply):
            log.warning("request %s: the resumed request was refused: %.500r", call.request_id, opened.body)
            return None
        return opened

    async def post(self, call: Call) -> UpstreamReply:
        """POST and read the whole answer, retrying on another engine on transport errors, 429 and 5xx."""
        attempts = _Attempts()
        async for engine in self._engines(call.model, call.deadline, call.work):
            try:
                reply = await self._post_to(engine, call, attempts)
            finally:
                self._pool.release(engine, call.work)
            if reply is not None:
                return reply
        raise attempts.error()

    async def _post_to(self, engine: Engine, call: Call, attempts: _Attempts) -> UpstreamReply | None:
        """One engine's answer to relay; None: try another engine. vLLM's retryable 500 is sent again to the same
        engine once first (server/relay/engine_errors.py)."""
        request_id = call.request_id
        for again in (True, False):
            try:
                async with self._session.post(
                    engine.url + call.path,
                    data=call.body,
                    timeout=self._timeout(call.deadline),
                    headers=self._headers(request_id),
                ) as resp:
                    if 200 <= resp.status < 300:
                        answer = await self._read_answer(engine, resp, request_id)
                        self._pool.progressed(engine)
                        return UpstreamReply(resp.status, answer, _content_type(resp))
                    error = await read_capped(resp)
                    if again and is_retryable(resp.status, error):
                        self._metrics.upstream_errors.labels("status_5xx").inc()
                        log.info(
                            "request %s: engine %s asked for a retry (%s); sent again",
                            request_id,
                            engine.name,
                            resp.status,
                        )
                        continue
                    return self._judge(engine, resp, error, attempts, request_id)
            except TRANSPORT_ERRORS as exc:
                if _kind(exc) == "timeout":  # each read may wait until the deadline: this is the deadline
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, request_id)
                return None
        return None  # not reached: the second try always returns

    async def _read_answer(self, engine: Engine, resp: aiohttp.ClientResponse, request_id: str) -> bytes:
        """A success's body, at most ``max_answer_bytes``; past it the connection is closed (vLLM aborts whatever
        is left of the request) and the client told its request asked for too much. The engine did its job: it
        is neither suspected nor is the request tried elsewhere."""
        limit = self._settings.max_answer_bytes
        if resp.content_length is not None and resp.content_length <= limit:
            return await resp.read()
        out = bytearray()
        while resp.content_length is None and len(out) <= limit:
            chunk = await resp.content.readany()
            if not chunk:
                return bytes(out)
            out += chunk
        resp.close()
        log.warning(
            "request %s: engine %s answered more than %d bytes (%s); refused",
            request_id,
            engine.name,
            limit,
            resp.content_length or "chunked",
        )
        raise AnswerTooLarge(
            f"the answer to this request is larger than this gateway relays ({limit} bytes); stream it "
            "(stream: true), or ask for fewer choices (n), logprobs or tokens (max_tokens)"
        )

    async def stream(self, call: Call, resume: Resume | None = None) -> UpstreamReply | EngineStream:
        """Open an SSE stream and wait for its first event; or the engine's client-error answer. ``resume``: how
        to continue the stream on another engine if its engine fails later (None: it ends with an error event)."""
        attempts, tried = _Attempts(), set[str]()
        opened = await self._open(call, call.body, tried, attempts)
        if isinstance(opened, UpstreamReply):
            return opened
        if opened is None:
            raise attempts.error()
        return EngineStream(self, call, opened, tried, resume if self._settings.stream_failover else None)

    async def _open(self, call: Call, body: bytes, tried: set[str], attempts: _Attempts) -> Leg | UpstreamReply | None:
        """A stream on the next engines not in ``tried`` (added to it) until one sends its first event; a client
        error to relay; or None when the attempts are spent."""
        async for engine in self._engines(call.model, call.deadline, call.work, tried):
            resp: aiohttp.ClientResponse | None = None
            handed_over = False
            try:
                resp = await self._session.post(
                    engine.url + call.path,
                    data=body,
                    timeout=self._timeout(call.deadline),
                    headers=self._headers(call.request_id),
                )
                if resp.status != 200:
                    reply = await self._refused(engine, resp, attempts, call.request_id)
                    if reply is not None:
                        return reply
                    continue
                events = sse_events(resp.content.iter_any(), self._settings.max_sse_event_bytes)
                first = await anext(events)
                handed_over = True
                self._pool.first_token(engine, call.work)
                self._pool.progressed(engine)
                return Leg(engine, resp, first, events)
            except TRANSPORT_ERRORS as exc:
                if _kind(exc) == "timeout":  # each read may wait until the deadline: this is the deadline
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, call.request_id)
            except StopAsyncIteration:
                self._failed(engine, aiohttp.ServerDisconnectedError("empty stream"), call.request_id)
            except EventTooLarge as exc:
                self._metrics.upstream_errors.labels("event_too_large").inc()
                log.warning("request %s: engine %s: %s", call.request_id, engine.name, exc)
            finally:
                if not handed_over:  # also on cancellation (client gone): never leak a slot or a connection
                    if resp is not None:
                        resp.close()  # an unfinished answer's connection is closed: vLLM aborts the request
                    self._pool.release(engine, call.work)
        return None


def _content_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("content-type", "application/json")
