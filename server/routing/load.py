"""An engine's load as one gateway sees it: this gateway's own requests now, plus other gateways' as the engine
last reported them.

Every health round reads the engine's ``/load`` (requests inside its API server, from arrival to answer) and
``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` from its ``/metrics`` (the scheduler's part of
those): they count the requests of *every* gateway in front of it.

    load = own outstanding now + other gateways' requests (smoothed over reports)

where a report's other gateways' requests are the engine's count less this gateway's own outstanding when it
was asked. Reports come every health round while requests change many times a second, so reacting in full to
each snapshot makes gateways herd (each sends its next requests to the engine that looked idle); smoothing over
reports (``Settings.engine_load_smoothing``, 0.2) damps that: a lasting imbalance (another gateway's or client's
traffic on one engine) still counts, transients fade. One gateway alone routes exactly as by its own counts.

``request_seconds`` integrates this gateway's requests in flight over time: summed over gateways, its rate is
each engine's mean number in flight. (Neither it nor served counts are even when the engines' speeds differ: a
slow replica holds each request longer and serves fewer.)
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable
from dataclasses import dataclass

RUNNING = b"vllm:num_requests_running"
WAITING = b"vllm:num_requests_waiting"
_WANTED = (RUNNING, WAITING)


@dataclass(frozen=True)
class Report:
    """What an engine said, and this gateway's request totals when it asked (``sent``/``done`` at that time)."""

    running: int
    waiting: int
    at: float
    """``time.monotonic()`` when it was asked for."""
    sent: int
    done: int
    in_server: int | None = None
    """``/load``: requests inside the engine's API server, pre- and post-processing included; None: unknown."""

    @property
    def requests(self) -> int:
        """The engine's requests: ``/load`` where it counts at least the scheduler's (an engine started without
        load tracking answers 0), else running + waiting."""
        return max(self.in_server or 0, self.running + self.waiting)


@dataclass
class EngineLoad:
    """The counters behind an engine's load; ``estimate()`` is what routing and admission compare."""

    outstanding: int = 0
    """This gateway's requests holding a slot on the engine."""
    sent: int = 0
    """This gateway's requests ever sent (slots handed out); with ``done``, what changed since a report."""
    done: int = 0
    report: Report | None = None
    others: float = 0.0
    """Other gateways' requests on the engine, smoothed over reports."""
    request_seconds: float = 0.0
    """Seconds this gateway's requests have held a slot on the engine, summed: the integral of ``outstanding``
    over time (its rate is the mean number in flight, whatever the engine's speed)."""
    changed_at: float = 0.0
    """``time.monotonic()`` of the last ``start``/``finish``."""

    def observe(self, report: Report, smoothing: float, max_age_s: float) -> None:
        """Take a report: ``smoothing`` (0–1] is the weight of its other gateways' requests against the past
        ones' (1: this report alone); after no report for ``max_age_s`` the past is forgotten."""
        share = max(report.requests - (report.sent - report.done), 0)
        if self.report is None or report.at - self.report.at > max_age_s:
            self.others = float(share)
        else:
            self.others += smoothing * (share - self.others)
        self.report = report

    def forget(self) -> None:
        """Whatever the engine said is void (it was ejected); re-admitted, it reports afresh."""
        self.report = None
        self.others = 0.0

    def start(self, now: float) -> float:
        """One more of this gateway's requests; returns the request-seconds added to ``request_seconds``."""
        elapsed = self._elapse(now)
        self.outstanding += 1
        self.sent += 1
        return elapsed

    def finish(self, now: float) -> float:
        elapsed = self._elapse(now)
        self.outstanding -= 1
        self.done += 1
        return elapsed

    def _elapse(self, now: float) -> float:
        added = self.outstanding * max(now - self.changed_at, 0.0)
        self.request_seconds += added
        self.changed_at = now
        return added

    def estimate(self, now: float, max_age_s: float) -> int:
        """Requests the engine holds; a report older than ``max_age_s`` is ignored (own counts only)."""
        report = self.report
        if report is None or now - report.at > max_age_s:
            return self.outstanding
        return self.outstanding + int(self.others)


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
