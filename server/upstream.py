"""Calls to engines: retries before the first byte, SSE relay, upstream close on client disconnect.

A request is re-sent to another engine only while nothing has reached the client: for plain requests until
the engine's whole answer is in hand, for streams until the first SSE event has arrived. After that, a failed
stream ends with one final SSE ``error`` event so clients never hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx

from server.config import Settings
from server.errors import GatewayError, GatewayTimeout, NoHealthyEngine, UpstreamError
from server.metrics import Metrics
from server.routing import Engine, EnginePool

log = logging.getLogger("server.upstream")

RETRIABLE_STATUS = frozenset({500, 502, 503, 504})
_PASS_HEADERS = ("content-type",)


@dataclass
class UpstreamReply:
    """A complete (non-streamed) engine answer, relayed verbatim."""

    status: int
    body: bytes
    content_type: str


def _kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "connect" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol"
    return "read"


class Upstream:
    def __init__(self, settings: Settings, pool: EnginePool, client: httpx.AsyncClient, metrics: Metrics) -> None:
        self._settings = settings
        self._pool = pool
        self._client = client
        self._metrics = metrics

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = max(deadline - time.monotonic(), 0.001)
        return httpx.Timeout(remaining, connect=min(self._settings.connect_timeout_s, remaining))

    @staticmethod
    def _headers(request_id: str) -> dict[str, str]:
        # vLLM adopts X-Request-Id as its own id: keep ours as the prefix (log correlation) but make it unique,
        # since a client-chosen id may repeat across concurrent requests.
        return {"content-type": "application/json", "x-request-id": f"{request_id}-{secrets.token_hex(4)}"}

    async def _engines(self, model: str, deadline: float) -> AsyncIterator[Engine]:
        """Yield up to ``max_attempts`` distinct engines (each holding a slot the caller must release)."""
        tried: set[str] = set()
        for attempt in range(self._settings.max_attempts):
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    engine = await self._pool.acquire(model, frozenset(tried))
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

    def _failed(self, engine: Engine, exc: httpx.HTTPError, request_id: str) -> None:
        kind = _kind(exc)
        self._metrics.upstream_errors.labels(kind).inc()
        log.warning("request %s: engine %s failed (%s: %s)", request_id, engine.name, kind, exc)
        if kind in ("connect", "protocol", "read"):
            self._pool.eject(engine, f"{kind} error")

    async def post(self, model: str, path: str, body: bytes, deadline: float, request_id: str) -> UpstreamReply:
        """POST and read the whole answer, retrying on another engine on transport errors and 5xx."""
        reply: UpstreamReply | None = None
        async for engine in self._engines(model, deadline):
            try:
                resp = await self._client.post(engine.url + path, content=body, timeout=self._timeout(deadline),
                                               headers=self._headers(request_id))
            except httpx.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, request_id)
                continue
            except httpx.HTTPError as exc:
                self._failed(engine, exc, request_id)
                continue
            finally:
                self._pool.release(engine)
            reply = UpstreamReply(resp.status_code, resp.content, resp.headers.get("content-type", "application/json"))
            if resp.status_code not in RETRIABLE_STATUS:
                return reply
            self._metrics.upstream_errors.labels("status_5xx").inc()
            log.warning("request %s: engine %s answered %s: %.500s", request_id, engine.name, resp.status_code,
                        resp.text)
        if reply is not None and reply.status < 500:
            return reply
        raise UpstreamError("no engine could complete the request")

    async def stream(self, model: str, path: str, body: bytes, deadline: float, request_id: str
                     ) -> UpstreamReply | AsyncIterator[bytes]:
        """Open an SSE stream; returns an iterator of whole SSE events, or the engine's non-200 answer."""
        reply: UpstreamReply | None = None
        async for engine in self._engines(model, deadline):
            resp: httpx.Response | None = None
            handed_over = False
            try:
                req = self._client.build_request("POST", engine.url + path, content=body,
                                                 timeout=self._timeout(deadline), headers=self._headers(request_id))
                resp = await self._client.send(req, stream=True)
                if resp.status_code != 200:
                    await resp.aread()
                    reply = UpstreamReply(resp.status_code, resp.content,
                                          resp.headers.get("content-type", "application/json"))
                    if resp.status_code not in RETRIABLE_STATUS:
                        return reply
                    self._metrics.upstream_errors.labels("status_5xx").inc()
                    continue
                events = _sse_events(resp.aiter_raw())
                first = await anext(events)
                handed_over = True
                return self._relay(engine, resp, first, events, request_id)
            except httpx.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise GatewayTimeout("the request timed out") from None
                self._failed(engine, exc, request_id)
            except httpx.HTTPError as exc:
                self._failed(engine, exc, request_id)
            except StopAsyncIteration:
                self._failed(engine, httpx.RemoteProtocolError("empty stream"), request_id)
            finally:
                if not handed_over:  # also on cancellation: never leak a slot or a connection
                    if resp is not None:
                        with anyio.CancelScope(shield=True):
                            await resp.aclose()
                    self._pool.release(engine)
        if reply is not None and reply.status < 500:
            return reply
        raise UpstreamError("no engine could complete the request")

    async def _relay(self, engine: Engine, resp: httpx.Response, first: bytes, events: AsyncIterator[bytes],
                     request_id: str) -> AsyncIterator[bytes]:
        try:
            yield first
            async for event in events:
                yield event
        except httpx.HTTPError as exc:
            self._metrics.upstream_errors.labels("stream_interrupted").inc()
            log.warning("request %s: stream from engine %s broke: %s", request_id, engine.name, exc)
            if not isinstance(exc, httpx.TimeoutException):
                self._pool.eject(engine, "stream interrupted")
            err = GatewayTimeout("the request timed out") if isinstance(exc, httpx.TimeoutException) \
                else UpstreamError("the engine stream was interrupted")
            yield sse_error(err)
        finally:
            # Shielded: on client disconnect this runs inside a cancelled scope; closing the upstream
            # connection is what makes vLLM abort the request.
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            self._pool.release(engine)


def sse_error(err: GatewayError) -> bytes:
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Regroup raw chunks into whole SSE events (each ending in a blank line); a torn tail is dropped."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        cut = buf.rfind(b"\n\n")
        if cut >= 0:
            yield buf[:cut + 2]
            buf = buf[cut + 2:]
    if buf.strip():
        raise httpx.RemoteProtocolError("stream ended inside an SSE event")
