"""The gateway's bounded queue for a slot: requests wait here while every engine of their model is at capacity.

A burst waits (up to ``ALM_MAX_QUEUE`` requests at once) and is woken whenever a slot frees or an engine's health
or load changes, to look again; a request that finds the queue full is refused with a 429 (``Overloaded``).
"""

from __future__ import annotations

import asyncio

from server.config import Settings
from server.errors import Overloaded
from server.metrics import Metrics


class SlotQueue:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.waiting = 0
        """Requests in the queue now."""
        self._changed = asyncio.Event()

    def join(self) -> None:
        """One more request waits; raises Overloaded when the queue is full."""
        if self.waiting >= self._settings.max_queue:
            raise Overloaded("the gateway is at capacity; retry later", retry_after_s=self._settings.retry_after_s)
        self.waiting += 1
        self._metrics.queue_depth.set(self.waiting)

    def leave(self) -> None:
        """A request that joined is done waiting (it got a slot, failed or was cancelled)."""
        self.waiting -= 1
        self._metrics.queue_depth.set(self.waiting)

    async def changed(self) -> None:
        """Until the next ``notify()``."""
        await self._changed.wait()

    def notify(self) -> None:
        """Wake every waiter to re-check (slots freed or health changed)."""
        self._changed.set()
        self._changed = asyncio.Event()
