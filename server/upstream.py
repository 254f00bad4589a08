"""Calls to engines: retries before the first byte, SSE relay, upstream close on client disconnect.

A request is re-sent to another engine only while nothing has reached the client: for plain requests until
the engine's whole answer is in hand, for streams until the first SSE event has arrived. After that, a failed
stream ends with one final SSE ``error`` event so clients never hang.

What reaches the client of an engine's answer: a 2xx (and a stream) verbatim; a 4xx (a client error) rebuilt
in OpenAI's error shape from the engine's body; nothing of a 5xx (the gateway's own 502 instead: tracebacks and
internals stay in the log). A 429 or a 5xx is tried on another engine; if every engine tried was busy, the
client gets a 429 with ``Retry-After``.

Engine traffic goes through one aiohttp session: it costs ~0.15 ms of CPU per proxied request where httpx costs
~0.7 ms (bench/gateway), and the gateway's CPU per request is what its throughput ratio hangs on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from server.config import Settings
from server.errors import GatewayError, GatewayTimeout, NoHealthyEngine, Overloaded, UpstreamError
from server.metrics import Metrics
from server.routing import Engine, EnginePool
from server.work import NO_WORK, RequestWork

log = logging.getLogger("server.upstream")

_ENGINE_AUTH = frozenset({401, 403, 407})
"""4xx that say the gateway (not the client) is misconfigured for that engine: another engine may take it."""
_ERROR_BODY_BYTES = 64 * 1024
"""Of an engine's error answer, only this much is read (and logged or rebuilt)."""
_MAX_MESSAGE_CHARS = 2000
_MAX_RETRY_AFTER_S = 3600


@dataclass
class UpstreamReply:
    """A complete (non-streamed) engine answer to relay: a 2xx verbatim, or a 4xx rebuilt in OpenAI's shape."""

    status: int
    body: bytes
    content_type: str


TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a failed engine call raises (aiohttp's timeouts are both)."""


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

    async def _engines(self, model: str, deadline: float, work: RequestWork) -> AsyncIterator[Engine]:
        """Yield up to ``max_attempts`` distinct engines (each holding a slot the caller must release)."""
        tried: set[str] = set()
        for attempt in range(self._settings.max_attempts):
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    engine = await self._pool.acquire(model, frozenset(tried), work)
            except TimeoutError:
                raise GatewayTimeout("the request timed out waiting for a free engine") from None
            except NoHealthyEngine:
                if not tried:
                    raise
                return
            if attempt:
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
        body = await _read_capped(resp)
        status = resp.status
        if 400 <= status < 500 and status != 429 and status not in _ENGINE_AUTH:
            return UpstreamReply(status, openai_error_body(status, body), "application/json")
        if status == 429:
            self._metrics.upstream_errors.labels("status_429").inc()
            attempts.retry_after_s.append(_retry_after(resp, self._settings.retry_after_s))
            log.info("request %s: engine %s is busy (429)", request_id, engine.name)
            return None
        self._metrics.upstream_errors.labels("status_5xx" if status >= 500 else "status_other").inc()
        log.warning("request %s: engine %s answered %s: %.500r", request_id, engine.name, status, body)
        return None

    async def post(
        self, model: str, path: str, body: bytes, deadline: float, request_id: str, work: RequestWork = NO_WORK
    ) -> UpstreamReply:
        """POST and read the whole answer, retrying on another engine on transport errors, 429 and 5xx."""
        attempts = _Attempts()
        async for engine in self._engines(model, deadline, work):
            reply: UpstreamReply | None = None
            try:
                async with self._session.post(
                    engine.url + path, data=body, timeout=self._timeout(deadline), headers=self._headers(request_id)
                ) as resp:
                    if 200 <= resp.status < 300:
                        return UpstreamReply(resp.status, await resp.read(), _content_type(resp))
                    reply = await self._refused(engine, resp, attempts, request_id)
            except TRANSPORT_ERRORS as exc:
                if _kind(exc) == "timeout":  # each read may wait until the deadline: this is the deadline
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, request_id)
                continue
            finally:
                self._pool.release(engine)
            if reply is not None:
                return reply
        raise attempts.error()

    async def stream(
        self, model: str, path: str, body: bytes, deadline: float, request_id: str, work: RequestWork = NO_WORK
    ) -> UpstreamReply | EngineStream:
        """Open an SSE stream and wait for its first event; or the engine's client-error answer."""
        attempts = _Attempts()
        async for engine in self._engines(model, deadline, work):
            resp: aiohttp.ClientResponse | None = None
            handed_over = False
            try:
                resp = await self._session.post(
                    engine.url + path, data=body, timeout=self._timeout(deadline), headers=self._headers(request_id)
                )
                if resp.status != 200:
                    reply = await self._refused(engine, resp, attempts, request_id)
                    if reply is not None:
                        return reply
                    continue
                events = sse_events(resp.content.iter_any(), self._settings.max_sse_event_bytes)
                first = await anext(events)
                handed_over = True
                return EngineStream(self._pool, self._metrics, engine, resp, first, events, request_id)
            except TRANSPORT_ERRORS as exc:
                if _kind(exc) == "timeout":  # each read may wait until the deadline: this is the deadline
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, request_id)
            except StopAsyncIteration:
                self._failed(engine, aiohttp.ServerDisconnectedError("empty stream"), request_id)
            except EventTooLarge as exc:
                self._metrics.upstream_errors.labels("event_too_large").inc()
                log.warning("request %s: engine %s: %s", request_id, engine.name, exc)
            finally:
                if not handed_over:  # also on cancellation (client gone): never leak a slot or a connection
                    if resp is not None:
                        resp.close()  # an unfinished answer's connection is closed: vLLM aborts the request
                    self._pool.release(engine)
        raise attempts.error()


class EngineStream:
    """The whole SSE events of one engine's stream, after the first. Holds the engine's slot and connection
    until ``close()``, which whoever relays it must call however the relay ends (``close`` is synchronous so it
    also runs in a cancelled scope); an unfinished stream's connection is closed, which makes vLLM abort."""

    def __init__(
        self,
        pool: EnginePool,
        metrics: Metrics,
        engine: Engine,
        resp: aiohttp.ClientResponse,
        first: bytes,
        events: AsyncIterator[bytes],
        request_id: str,
    ) -> None:
        self._pool, self._metrics, self._engine, self._resp = pool, metrics, engine, resp
        self._first, self._events, self._request_id = first, events, request_id
        self._complete = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            yield self._first
            async for event in self._events:
                yield event
            self._complete = True
        except TRANSPORT_ERRORS as exc:
            self._metrics.upstream_errors.labels("stream_interrupted").inc()
            log.warning("request %s: stream from engine %s broke: %r", self._request_id, self._engine.name, exc)
            if isinstance(exc, TimeoutError):
                yield sse_error(GatewayTimeout("the request timed out"))
            else:
                self._pool.suspect(self._engine, "stream interrupted")
                yield sse_error(UpstreamError("the engine stream was interrupted"))
        except EventTooLarge as exc:  # the engine is fine; this answer is not relayable
            self._metrics.upstream_errors.labels("event_too_large").inc()
            log.warning("request %s: engine %s: %s", self._request_id, self._engine.name, exc)
            yield sse_error(UpstreamError("the engine sent a stream event too large to relay"))
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete:
            self._resp.release()  # read to the end: the connection goes back to the pool
        else:
            self._resp.close()
        self._pool.release(self._engine)


def _content_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("content-type", "application/json")


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """At most ``_ERROR_BODY_BYTES`` of an answer (the rest is dropped with the connection)."""
    out = bytearray()
    while len(out) < _ERROR_BODY_BYTES:
        chunk = await resp.content.read(_ERROR_BODY_BYTES - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _retry_after(resp: aiohttp.ClientResponse, default: int) -> int:
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


def sse_error(err: GatewayError) -> bytes:
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"


class EventTooLarge(Exception):
    """An engine's SSE event (or unterminated tail) exceeds ``max_sse_event_bytes``."""


_BLANK_LINES = (b"\n\n", b"\n\r", b"\r\r")
"""Every blank line (a line terminator followed by another; the terminators are CRLF, LF and CR) holds one of
these pairs, and each pair is a blank line: searching for them (memchr-fast) finds where events end."""
_CR, _LF = 0x0D, 0x0A


async def sse_events(chunks: AsyncIterator[bytes], max_event_bytes: int) -> AsyncIterator[bytes]:
    """Regroup raw chunks into runs of whole SSE events, each event ending in ``\\n\\n`` with LF line ends.

    Linear in the bytes read: each pattern's search resumes where it stopped, and bytes move at most once.
    Memory is bounded: an event, or an unterminated tail, longer than ``max_event_bytes`` raises EventTooLarge.
    A torn tail at the end raises ClientPayloadError."""
    buf = bytearray()
    scan = 0
    async for chunk in chunks:
        if not buf and chunk.endswith(b"\n\n") and len(chunk) <= max_event_bytes and b"\r" not in chunk:
            yield chunk  # the usual case (vLLM: whole LF-framed events per chunk) at the cost of two scans
            continue
        buf += chunk
        found = {pair: buf.find(pair, scan) for pair in _BLANK_LINES}
        start = 0
        while hits := [pos for pos in found.values() if pos >= 0]:
            pos = min(hits)
            body_end = pos - 1 if buf[pos] == _LF and pos > start and buf[pos - 1] == _CR else pos  # a CRLF
            end = pos + 3 if buf[pos + 1 : pos + 3] == b"\r\n" else pos + 2
            if body_end - start > max_event_bytes:
                raise EventTooLarge(f"an SSE event is larger than {max_event_bytes} bytes")
            # Leading line ends are blank lines before the event (dispatch nothing), e.g. an LF after a CR.
            event = bytes(buf[start:body_end]).lstrip(b"\r\n")
            start = end
            for pair, at in found.items():
                if 0 <= at < end:
                    found[pair] = buf.find(pair, end)
            if b"\r" in event:
                event = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if event:
                yield event + b"\n\n"
        if start:
            del buf[:start]
        if len(buf) > max_event_bytes:
            raise EventTooLarge(f"an SSE event is larger than {max_event_bytes} bytes (no end in sight)")
        scan = max(len(buf) - 1, 0)  # a pair may straddle the old end
    if buf.strip():
        raise aiohttp.ClientPayloadError("stream ended inside an SSE event")
