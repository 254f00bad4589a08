"""The gateway's HTTP/1.1 server: uvicorn with httptools, plus the limits uvicorn leaves out.

Measured with uvicorn 0.54: its default protocol (httptools) bounds neither the size of a request's headers (a
16 MB header was buffered whole, +16 MiB RSS, and answered 200) nor the time before or while a client sends
them: a connection that never sends a request, or sends its headers a byte at a time, is held forever (its
keep-alive timer only starts after a response). uvicorn's h11 protocol bounds the size but not the time, and
cost 260-320 µs of server CPU per request against httptools' 53-60 µs. So: httptools, with a byte budget for
each request head (checked before the parser buffers it), a deadline for the head, and an idle deadline that
also covers a connection's first request.
"""

from __future__ import annotations

import asyncio
import http
import json
import math
from typing import ClassVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.app import configure_logging, create_app
from server.config import Settings


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header byte budget, a header deadline and an idle deadline.

    A connection is idle (deadline ``keep_alive_s``), reading a request head (from its first byte:
    ``header_timeout_s``, at most ``max_header_bytes``), or busy (no deadline here: body reads are bounded by the
    gateway's middleware, responses by the request timeout).
    """

    max_header_bytes: ClassVar[int] = 32 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_s: ClassVar[float] = 5.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # uvicorn passes config, state and loop
        self.timeout_keep_alive = self.keep_alive_s  # type: ignore[assignment]  # uvicorn's own (int) keep-alive
        self._head_budget = self.max_header_bytes
        self._reading_head = True  # until a request's headers are complete, bytes count against the budget
        self._in_head = False  # a request has begun and its headers are not complete
        self._heads_done = 0
        self._deadline: asyncio.TimerHandle | None = None

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
        self._arm(self.keep_alive_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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
        super().on_headers_complete()

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


def protocol_class(settings: Settings) -> type[LimitedHttpProtocol]:
    """The protocol with ``settings``' limits (uvicorn instantiates it per connection with its own arguments)."""
    return type("GatewayHttpProtocol", (LimitedHttpProtocol,), {
        "max_header_bytes": settings.http_max_header_bytes,
        "header_timeout_s": settings.http_header_timeout_s,
        "keep_alive_s": settings.http_keep_alive_timeout_s,
    })  # fmt: skip


def uvicorn_config(app: FastAPI, settings: Settings, host: str, port: int, **kwargs: object) -> uvicorn.Config:
    """How the gateway is served, wherever it runs (``alm gateway``, ``alm serve``, the tests)."""
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(settings), access_log=False,
        timeout_keep_alive=math.ceil(settings.http_keep_alive_timeout_s),
        limit_concurrency=settings.http_max_connections,
        timeout_graceful_shutdown=settings.graceful_shutdown_s, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def serve_gateway(settings: Settings, host: str, port: int) -> None:
    """Run the gateway in this process until SIGINT/SIGTERM (in-flight requests drain first)."""
    configure_logging(settings.log_level)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, host, port)).run()
