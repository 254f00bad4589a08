"""Reading a request body under four limits: its size (413), an absolute read deadline and a minimum rate over a
sliding window (408), and a budget of body bytes held at once, all clients together and per client (429).

Why a sliding window: a deadline that grows with the bytes received lets a client that sends 140 MB in 3 s and
then goes silent keep its body (and its share of the budget) for half an hour. Here, once the ``grace_s`` after
the first byte has passed, the last ``window_s`` seconds must always have brought ``min_rate × window_s`` bytes:
a body that stops making progress is cut within ``max(grace_s, window_s)`` of stalling, however much it sent
before; and no body takes longer than ``max_s`` in all. Once the body is complete, ``receive`` is passed through
untouched (the app waits on it for the client's disconnect).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from server.errors import Overloaded, PayloadTooLarge, RequestTimeout

if TYPE_CHECKING:  # ASGI's types only: no web framework below the request flow
    from starlette.types import Message, Receive

EXEMPT_BYTES = 64 * 1024
"""Bodies up to this size are not counted in the budget: small requests are never refused for big ones."""


class BodyBudget:
    """Bytes of request bodies held at once: all requests together, and each client's (its API key, else its
    address) within ``per_client`` of them, so one client cannot hold the whole budget. One event loop: no lock."""

    def __init__(self, limit: int, per_client: int, retry_after_s: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.used = 0
        self.by_client: dict[str, int] = {}
        self.retry_after_s = retry_after_s

    def take(self, client: str, n: int) -> None:
        mine = self.by_client.get(client, 0)
        if mine + n > self.per_client:
            raise Overloaded(
                "this client is already sending as many large request bodies as it may at once; retry once they "
                "are done",
                retry_after_s=self.retry_after_s,
                code="too_many_large_bodies",
            )
        if self.used + n > self.limit:
            raise Overloaded(
                "too many large request bodies are being processed; retry shortly",
                retry_after_s=self.retry_after_s,
                code="too_many_large_bodies",
            )
        self.used += n
        self.by_client[client] = mine + n

    def give(self, client: str, n: int) -> None:
        if n == 0:
            return
        self.used -= n
        left = self.by_client.get(client, 0) - n
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)  # the map holds only clients with bodies in flight


class BodyPace:
    """When a body's read must end if no more bytes arrive: the earlier of ``start + max_s`` and the moment the
    last ``window_s`` seconds would hold fewer than ``min_rate × window_s`` bytes (never before ``start + grace_s``)."""

    def __init__(self, *, grace_s: float, window_s: float, min_rate: float, max_s: float) -> None:
        self.start = time.monotonic()
        self.grace_s, self.window_s, self.max_s = grace_s, window_s, max_s
        self.need = min_rate * window_s
        """Bytes every window must bring."""
        self.seen = 0
        self._arrivals: deque[tuple[float, int]] = deque([(self.start, 0)])
        """(time, bytes seen after it): the arrivals that may still be inside the newest ``need`` bytes."""

    def arrived(self, n: int) -> None:
        now = time.monotonic()
        self.seen += n
        self._arrivals.append((now, self.seen))
        # Keep only the last arrival at or before the point where the newest `need` bytes begin.
        while len(self._arrivals) > 1 and self._arrivals[1][1] <= self.seen - self.need:
            self._arrivals.popleft()

    def deadline(self) -> float:
        # The newest `need` bytes began arriving after the first kept arrival that has more than seen − need
        # bytes behind it; without more bytes, the window slides past that arrival `window_s` later.
        first = next(t for t, count in self._arrivals if count > self.seen - self.need)
        by_rate = max(self.start + self.grace_s, first + self.window_s)
        return min(by_rate, self.start + self.max_s)


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
        client: str,
        pace: BodyPace,
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.budget = budget
        self.client = client
        self.pace = pace
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
            self.budget.take(self.client, size - self.held)
            self.held = size

    def release(self) -> None:
        self.budget.give(self.client, self.held)
        self.held = 0

    async def receive(self) -> Message:
        if self.done or self.given_up:
            return await self._receive()
        left = self.pace.deadline() - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                message = await self._receive()
        except TimeoutError:
            self.given_up = True
            pace = self.pace
            raise RequestTimeout(
                f"the request body did not arrive in time ({pace.seen} bytes received): after the first "
                f"{pace.grace_s:g} s every {pace.window_s:g} s must bring at least {int(pace.need)} bytes, and the "
                f"whole body must arrive within {pace.max_s:g} s",
                code="body_read_timeout",
            ) from None
        if message["type"] != "http.request":
            self.given_up = True  # http.disconnect
            return message
        chunk = len(message.get("body", b""))
        self.pace.arrived(chunk)
        self._check_size(self.pace.seen)
        self._hold(self.pace.seen)
        self.done = not message.get("more_body", False)
        return message
