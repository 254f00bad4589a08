"""The gateway's HTTP/1.1 server: uvicorn with httptools, plus the limits uvicorn leaves out.

Measured with uvicorn 0.54: its default protocol (httptools) bounds neither the size of a request's headers (a
16 MB header was buffered whole, +16 MiB RSS, and answered 200) nor the time before or while a client sends
them: a connection that never sends a request, or sends its headers a byte at a time, is held forever (its
keep-alive timer only starts after a response). uvicorn's h11 protocol bounds the size but not the time, and
cost 260-320 µs of server CPU per request against httptools' 53-60 µs. So: httptools, with a byte budget for
each request head (checked before the parser buffers it), a deadline for the head, and an idle deadline that
also covers a connection's first request.

uvicorn's ``limit_concurrency`` counts every open connection, idle ones too, and answers 503 to every request
beyond it, probes included: 1,100 idle connections from one client took ``/health`` down (a liveness probe
would then restart the pod). So each client (peer address) may hold ``max_connections_per_client`` of them;
its connections beyond that do not count against everyone's limit, live at most a second, and answer their
request with 429 before closing. ``/health`` and ``/ready`` are answered whatever the counts.
"""

from __future__ import annotations

import asyncio
import http
import json
import math
from typing import ClassVar

import httptools
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from server.api.app import configure_logging, create_app
from server.config import Settings
from server.guards.headers import PROBE_PATHS


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header byte budget, a header deadline and an idle deadline.

    A connection is idle (deadline ``keep_alive_s``), reading a request head (from its first byte:
    ``header_timeout_s``, at most ``max_header_bytes``), or busy (no deadline here: body reads are bounded by the
    gateway's middleware, responses by the request timeout).
    """

    max_header_bytes: ClassVar[int] = 32 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_s: ClassVar[float] = 5.0
    max_connections_per_client: ClassVar[int] = 256
    open_by_client: ClassVar[dict[str, int]] = {}
    """Open connections per peer address, shared by one server's connections (``protocol_class`` makes a dict
    per server)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # uvicorn passes config, state and loop
        self.timeout_keep_alive = self.keep_alive_s  # type: ignore[assignment]  # uvicorn's own (int) keep-alive
        self._head_budget = self.max_header_bytes
        self._reading_head = True  # until a request's headers are complete, bytes count against the budget
        self._in_head = False  # a request has begun and its headers are not complete
        self._heads_done = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._peer: str | None = None
        self._over_client_limit = False

    # --- deadlines ---
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._in_head:
            self.transport.close()  # idle: a plain keep-alive close
        elif self.cycle is None or self.cycle.response_complete:
            self._refuse(408, "request_timeout", f"request headers not received within {self.header_timeout_s:g} s")
        else:
            self.cycle.keep_alive = False  # a pipelined response is still going out: close after it

    # --- protocol ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            self._peer = self.client[0]
            count = self.open_by_client.get(self._peer, 0) + 1
            self.open_by_client[self._peer] = count
            self._over_client_limit = count > self.max_connections_per_client
        if self._over_client_limit:
            # Not counted against everyone's limit, and given a second for the request its 429 answers.
            self.connections.discard(self)
            self._arm(min(self.keep_alive_s, 1.0))
        else:
            self._arm(self.keep_alive_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._peer is not None:
            left = self.open_by_client.get(self._peer, 1) - 1
            if left > 0:
                self.open_by_client[self._peer] = left
            else:
                self.open_by_client.pop(self._peer, None)
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if not self._reading_head or len(data) <= self._head_budget:
            if self._reading_head:
                self._head_budget -= len(data)
            super().data_received(data)
            return
        # Over budget: parse only what fits (the parser buffers header bytes); the head must end inside it.
        fits, rest = data[: self._head_budget], data[self._head_budget :]
        self._head_budget = 0
        heads = self._heads_done
        super().data_received(fits)
        if self._heads_done == heads:
            if not self.transport.is_closing():
                self._refuse(431, "headers_too_large", f"request line and headers exceed {self.max_header_bytes} bytes")
            return
        self.data_received(rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_head = self._reading_head = False
        self._heads_done += 1
        self._disarm()
        if self._is_probe():  # answered even beyond the connection limits
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
        elif self._over_client_limit:
            app, self.app = self.app, _too_many_connections  # an ASGI app like uvicorn's own 503
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.app, self.limit_concurrency = app, limit
        else:
            super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        before = set(self.tasks)
        super()._start_asgi_task(cycle, app)
        for task in self.tasks - before:  # the one task just started (one event loop)
            task.add_done_callback(lambda _: self._drop_if_stuck(cycle))

    def _drop_if_stuck(self, cycle: RequestResponseCycle) -> None:
        """The app gave up on a response its client stopped reading (server/relay/write_clock.py): uvicorn's close
        waits until the client takes the unsent rest, i.e. forever; drop the connection instead."""
        if not cycle.response_complete and self.flow.write_paused:
            self.transport.abort()

    def _is_probe(self) -> bool:
        try:
            return httptools.parse_url(self.url).path.decode("ascii") in PROBE_PATHS
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn answers it

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True  # what follows is the next request's head
        self._head_budget = self.max_header_bytes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and not self._in_head:
            self._arm(self.keep_alive_s)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, in the OpenAI error shape like every other 4xx."""
        self._refuse(400, "invalid_http_request", "invalid HTTP request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        ).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a connection beyond its client's share; the connection closes after it."""
    body = json.dumps({"error": {
        "message": "too many open connections from this client; reuse connections or close idle ones",
        "type": "rate_limit_error", "param": None, "code": "too_many_connections",
    }}).encode()  # fmt: skip
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protocol_class(settings: Settings) -> type[LimitedHttpProtocol]:
    """The protocol with ``settings``' limits (uvicorn instantiates it per connection with its own arguments)."""
    return type("GatewayHttpProtocol", (LimitedHttpProtocol,), {
        "max_header_bytes": settings.http_max_header_bytes,
        "header_timeout_s": settings.http_header_timeout_s,
        "keep_alive_s": settings.http_keep_alive_timeout_s,
        "max_connections_per_client": settings.http_max_connections_per_client,
        "open_by_client": {},
    })  # fmt: skip


def uvicorn_config(app: FastAPI, settings: Settings, host: str, port: int, **kwargs: object) -> uvicorn.Config:
    """How the gateway is served, wherever it runs (``alm gateway``, ``alm serve``, the tests)."""
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(settings), access_log=False,
        timeout_keep_alive=math.ceil(settings.http_keep_alive_timeout_s),
        limit_concurrency=settings.http_max_connections,
        proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies or None,
        timeout_graceful_shutdown=settings.graceful_shutdown_s, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def serve_gateway(settings: Settings, host: str, port: int) -> None:
    """Run the gateway in this process until SIGINT/SIGTERM (in-flight requests drain first)."""
    configure_logging(settings.log_level)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, host, port)).run()
