"""Reading a request body under three limits: its size (413), a read deadline (408) and a budget of body bytes
held by all requests at once (429).

The deadline: ``timeout_s`` of grace, plus one second per ``min_rate`` bytes received so far; a client that
trickles (1 B/s) or stalls is cut off, one that sends 100 MiB at a modest steady rate is not. Once the body is
complete, ``receive`` is passed through untouched (the app waits on it for the client's disconnect).
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import Message, Receive

from server.errors import Overloaded, PayloadTooLarge, RequestTimeout

EXEMPT_BYTES = 64 * 1024
"""Bodies up to this size are not counted in the budget: small requests are never refused for big ones."""


class BodyBudget:
    """Bytes of request bodies held at once, all requests together (one event loop: no lock needed)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.used = 0
        self.retry_after_s = retry_after_s

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise Overloaded(
                "too many large request bodies are being processed; retry shortly",
                retry_after_s=self.retry_after_s,
                code="too_many_large_bodies",
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class GuardedBody:
    """One request's body: wraps the ASGI ``receive``. Call ``release()`` when the body is no longer held."""

    def __init__(
        self,
        receive: Receive,
        *,
        limit: int,
        declared: int | None,
        chunked: bool,
        budget: BodyBudget,
        timeout_s: float,
        min_rate: float,
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.budget = budget
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.start = time.monotonic()
        self.seen = 0
        self.held = 0
        self.done = not (declared or chunked)
        """Whether the whole body has been read (or there is none); else a response must close the connection,
        or the unread rest would be parsed as the next request."""
        self.given_up = False
        if declared is not None:
            self._check_size(declared)  # budget is taken only as bytes arrive: headers alone hold nothing

    def _check_size(self, size: int) -> None:
        if size > self.limit:
            raise PayloadTooLarge(f"request body is larger than the {self.limit} byte limit")

    def _hold(self, size: int) -> None:
        if size > EXEMPT_BYTES and size > self.held:
            self.budget.take(size - self.held)
            self.held = size

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0

    async def receive(self) -> Message:
        if self.done or self.given_up:
            return await self._receive()
        left = self.start + self.timeout_s + self.seen / self.min_rate - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                message = await self._receive()
        except TimeoutError:
            self.given_up = True
            raise RequestTimeout(
                f"the request body did not arrive in time ({self.seen} bytes received; send at "
                f"least {int(self.min_rate)} bytes/s after the first {self.timeout_s:g} s)",
                code="body_read_timeout",
            ) from None
        if message["type"] != "http.request":
            self.given_up = True  # http.disconnect
            return message
        self.seen += len(message.get("body", b""))
        self._check_size(self.seen)
        self._hold(self.seen)
        self.done = not message.get("more_body", False)
        return message
