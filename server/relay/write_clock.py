"""A response's sends, timed: a client that stops reading is noticed (``client_write_timeout_s``).

An ASGI server's ``send`` waits while the connection's write buffer is full (uvicorn: above 64 KiB, until it
drains to 16 KiB), so a send that has waited that long means the client took no data for that long.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Send


class ClientStalled(Exception):
    """The client took no data for ``client_write_timeout_s``: it stopped reading."""


class WriteClock:
    """Times a response's sends: one timestamp per send, and a watchdog that looks four times per period (an
    ``asyncio.timeout`` per send would arm and cancel a timer per event)."""

    def __init__(self, send: Send, timeout_s: float) -> None:
        self._send, self._timeout_s = send, timeout_s
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None

    async def send(self, message: Message) -> None:
        self._since = self._loop.time()
        try:
            await self._send(message)
        finally:
            self._since = None

    async def watch(self) -> None:
        """Raise ClientStalled once a send has waited ``timeout_s`` (noticed within a quarter more)."""
        while True:
            await asyncio.sleep(self._timeout_s / 4)
            if self._since is not None and self._loop.time() - self._since >= self._timeout_s:
                raise ClientStalled()
