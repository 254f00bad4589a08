"""Reading an engine's own load reports: its ``/load`` and the scheduler's gauges in its ``/metrics``.

After every passing health check (``Settings.engine_load_metrics``) the health checker asks the engine for its
requests, every gateway's; ``LoadReader`` hands what it says to the engine's ``EngineLoad`` (server/routing/load.py),
publishes it, and wakes the requests waiting for a slot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterable, Callable

import aiohttp

from server.config import Settings
from server.metrics import Metrics
from server.routing.engine import Engine
from server.routing.ledger import Ledger
from server.routing.load import Report

log = logging.getLogger("server.routing.pool")  # the pool's logger: its log lines read as before the split

RUNNING = b"vllm:num_requests_running"
WAITING = b"vllm:num_requests_waiting"
_WANTED = (RUNNING, WAITING)


class LoadReader:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        ledger: Ledger,
        notify: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._ledger = ledger
        self._notify = notify

    async def read(self, engine: Engine, timeout: aiohttp.ClientTimeout) -> None:
        """The engine's own count of its requests: ``/load`` (requests inside its API server, every gateway's),
        and ``/metrics``' running + waiting (the scheduler's part of them, also published as gauges); a failure
        only leaves the last report to age out (a vLLM serving requests is healthy even if its metrics are not
        readable)."""
        now, sent, done = time.monotonic(), engine.load.sent, engine.load.done
        in_server = await self._read_server_load(engine, timeout)
        try:
            async with self._session.get(engine.url + "/metrics", timeout=timeout) as resp:
                resp.raise_for_status()
                counts = await read_report(resp.content, self._settings.engine_metrics_max_bytes)
        except MetricsTooLarge as exc:
            log.warning("engine %s: %s", engine.name, exc)
            counts = None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: a line past aiohttp's limit
            log.debug("engine %s: no load report: %r", engine.name, exc)
            counts = None
        if counts is None and in_server is None:
            log.debug("engine %s: neither /load nor vllm:num_requests_running/_waiting in /metrics", engine.name)
            return
        running, waiting = counts or (0, 0)
        engine.load.observe(
            Report(running, waiting, at=now, sent=sent, done=done, in_server=in_server),
            self._settings.engine_load_smoothing,
            self._ledger.max_report_age,
        )
        self._metrics.engine_reported(engine.name, running, waiting)
        self._ledger.publish(engine)
        self._notify()  # it may have room now

    async def _read_server_load(self, engine: Engine, timeout: aiohttp.ClientTimeout) -> int | None:
        """vLLM's ``/load`` (``--enable-server-load-tracking``, set by the engine contract): requests between
        arrival and answer. The scheduler's gauges miss those still in the API server's pre- or post-processing:
        with 8 requests of 10 s audio in flight on one CPU engine, running + waiting averaged 3.1, ``/load`` 7.4.
        An engine started without tracking answers 0 (``Report.requests`` then falls back to the gauges); one
        without the endpoint (404) is not asked again."""
        if engine.server_load is False:
            return None
        try:
            async with self._session.get(engine.url + "/load", timeout=timeout) as resp:
                if resp.status == 404:
                    engine.server_load = False
                    return None
                resp.raise_for_status()
                value = (await resp.json(content_type=None)).get("server_load")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            log.debug("engine %s: no /load: %r", engine.name, exc)
            return None
        if type(value) is not int or value < 0:
            return None
        engine.server_load = True
        return value


class MetricsTooLarge(ValueError):
    """The engine's ``/metrics`` answer ran past the byte limit before both series were read."""


async def read_report(lines: AsyncIterable[bytes], max_bytes: int) -> tuple[int, int] | None:
    """(running, waiting) from Prometheus text exposition lines, each family summed over its label sets
    (one per served model / data-parallel rank); None if either family is missing or a value is not a finite
    count. Stops at the first line after both families (a family's lines are contiguous in the format), so a
    vLLM answer of ~100 KiB is read only up to its scheduler gauges."""
    totals: dict[bytes, float] = {}
    read = 0
    async for line in lines:
        read += len(line)
        if read > max_bytes:
            raise MetricsTooLarge(f"more than {max_bytes} bytes of /metrics before both load series")
        name = _sample_name(line)
        if name in _WANTED:
            value = _sample_value(line)
            if value is None:
                return None
            totals[name] = totals.get(name, 0.0) + value
        elif len(totals) == len(_WANTED) and not line.startswith(b"#"):
            break
    if len(totals) < len(_WANTED):
        return None
    return round(totals[RUNNING]), round(totals[WAITING])


def _sample_name(line: bytes) -> bytes:
    end = len(line)
    for stop in (b"{", b" "):
        at = line.find(stop, 0, end)
        if at >= 0:
            end = at
    return line[:end].strip()


def _sample_value(line: bytes) -> float | None:
    """The value of ``name{labels} value [timestamp]``; None unless a finite, non-negative number."""
    close = line.rfind(b"}")
    fields = line[close + 1 if close >= 0 else 0 :].split()
    if close < 0:
        fields = fields[1:]  # drop the name
    try:
        value = float(fields[0])
    except (IndexError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
