"""The ledger of what each engine holds, in requests and in tokens of work: counted as the pool hands out and takes
back slots, estimated for routing, and published as the engine's gauges.

Load in requests is the engine's ``EngineLoad`` estimate (server/routing/load.py), ignoring a report older than two
health rounds. Work is this gateway's requests' tokens (server/work.py) plus the other requests its load counts,
each valued at an average request's work: a moving average of the requests this gateway routed.
"""

from __future__ import annotations

import time

from server.config import Settings
from server.metrics import Metrics
from server.routing.engine import Engine
from server.routing.policies import request_tokens
from server.work import NO_WORK, RequestWork


class Ledger:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._mean_work = float(settings.routing_output_tokens)
        """Tokens of an average request (moving average of those acquired): what another gateway's request on an
        engine is counted as."""

    @property
    def max_report_age(self) -> float:
        """Seconds an engine's load report counts: two health rounds."""
        return 2 * self._settings.health_interval_s + self._settings.health_timeout_s

    def load(self, engine: Engine) -> int:
        """Requests ``engine`` holds, every gateway's (a report older than two health rounds is ignored)."""
        return engine.load.estimate(time.monotonic(), self.max_report_age)

    def work_of(self, engine: Engine, load: int | None = None) -> float:
        """Tokens of work ``engine`` holds: this gateway's requests' (exact) plus the others its load counts
        (other gateways', or reported but not yet finished) at an average request's work each."""
        load = self.load(engine) if load is None else load
        return engine.work.tokens + max(load - engine.outstanding, 0) * self._mean_work

    def start(self, engine: Engine, work: RequestWork) -> None:
        """A request of ``work`` took a slot on ``engine``."""
        self._metrics.engine_request_seconds.labels(engine.name).inc(engine.load.start(time.monotonic()))
        engine.work.add(work)
        if work is not NO_WORK:
            self._mean_work += 0.05 * (request_tokens(work, self._settings.routing_output_tokens) - self._mean_work)
        self.publish(engine)

    def first_token(self, engine: Engine, work: RequestWork) -> None:
        """The request's prefill is done: it leaves ``engine``'s work."""
        engine.work.first_token(work)
        self.publish(engine)

    def finish(self, engine: Engine, work: RequestWork | None, prefilled: bool) -> None:
        """The request gave its slot back (``work`` None: an average request's share is removed)."""
        self._metrics.engine_request_seconds.labels(engine.name).inc(engine.load.finish(time.monotonic()))
        engine.work.remove(work, prefilled)
        self.publish(engine)

    def publish(self, engine: Engine) -> None:
        """``engine``'s gauges: this gateway's requests on it, its load, its work, its audio in flight."""
        load = self.load(engine)
        self._metrics.engine_in_flight.labels(engine.name).set(engine.outstanding)
        self._metrics.engine_load.labels(engine.name).set(load)
        self._metrics.engine_work.labels(engine.name).set(self.work_of(engine, load))
        self._metrics.engine_audio_in_flight.labels(engine.name).set(engine.work.audio_seconds)
