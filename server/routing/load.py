"""An engine's load as one gateway sees it: this gateway's own requests now, plus other gateways' as the engine
last reported them.

Every health round reads the engine's ``/load`` (requests inside its API server, from arrival to answer) and
``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` from its ``/metrics`` (the scheduler's part of
those; server/routing/load_reports.py reads both): they count the requests of *every* gateway in front of it.

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

from dataclasses import dataclass


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
