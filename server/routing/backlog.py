"""Admission by audio backlog: a per-model bound on the audio seconds this gateway has queued.

A request's audio is *queued* from its admission here until its engine starts answering: the first SSE event of
a stream (vLLM sends it once the prompt's prefill has produced the first token) or the whole answer of a plain
request (its decode included: the gateway sees nothing earlier). That spans the gateway's queue for an engine
slot, the engine's own queue, the audio encoder and the prefill. It is *in flight* until the answer or the
stream ends. Text-only requests carry no audio: they are never refused here (the gateway's queue and the
engines' capacity bound them, server/routing/pool.py).

Beyond ``Settings.max_queued_audio_seconds`` of a model's audio queued, a request with audio is refused with
429 ``audio_backlog`` and a ``Retry-After`` of the time the backlog needs to drain enough for it, at the measured
drain rate: audio seconds whose engine started answering, per second of time during which audio was queued (an
exponentially weighted average over the last ``DRAIN_WINDOW_S`` such seconds, the time since the last drain
included, so a stalled engine makes it fall). A request whose audio alone exceeds the bound is admitted when
nothing is queued: a retry could never cure that 429.

Counts are this gateway's (each replica of the gateway bounds its own), per served model name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.config import Settings
from server.errors import Overloaded
from server.metrics import Metrics

DRAIN_WINDOW_S = 30.0
"""Time constant of the drain rate's average, in seconds of queued (busy) time."""
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
"""Retry-After is clamped to this: past a minute the estimate is a guess, and a client should look again."""


@dataclass
class _ModelBacklog:
    series: _Series
    """The model's labelled metric children (``labels()`` costs ~1 µs a call)."""
    queued: float = 0.0
    in_flight: float = 0.0
    busy_since: float = 0.0
    """When ``queued`` last rose from 0."""
    last_drain: float = 0.0
    drained: float = 0.0
    """Audio seconds drained, exponentially weighted by busy time."""
    busy: float = 0.0
    """Busy seconds, weighted the same way (``drained / busy`` is the rate)."""

    def rate(self, now: float | None = None) -> float | None:
        """Audio seconds drained per busy second; with ``now``, counting the busy time since the last drain as
        time in which nothing drained (an engine that stalls makes Retry-After grow, not stay at its last rate)."""
        drained, busy = self.drained, self.busy
        if now is not None and self.queued > 0:
            idle = max(now - max(self.last_drain, self.busy_since), 0.0)
            decay = math.exp(-idle / DRAIN_WINDOW_S)
            drained, busy = drained * decay, busy * decay + idle
        return drained / busy if busy > 0 and drained > 0 else None


class Ticket:
    """One admitted request's audio: ``answered()`` when its engine starts answering (leaves the queue and counts
    toward the drain rate), ``close()`` when it ends however it ends (leaves the queue if still in it, and
    flight). Both are idempotent and synchronous (they run in cancelled scopes too)."""

    def __init__(self, backlog: Backlog | None, model: str, seconds: float) -> None:
        self._backlog, self._model, self._seconds = backlog, model, seconds
        self._queued = self._flying = backlog is not None

    @property
    def counted(self) -> bool:
        """Whether the backlog counts it (audio, for a model an engine serves)."""
        return self._backlog is not None

    def answered(self) -> None:
        if self._queued and self._backlog is not None:
            self._queued = False
            self._backlog._answered(self._model, self._seconds)

    def close(self) -> None:
        if self._backlog is None:
            return
        if self._queued:
            self._queued = False
            self._backlog._dequeue(self._model, self._seconds)
        if self._flying:
            self._flying = False
            self._backlog._land(self._model, self._seconds)


NO_TICKET = Ticket(None, "", 0.0)
"""For requests the backlog does not count (no audio, or a model no engine serves)."""


class Backlog:
    """Per model: audio seconds queued and in flight, the drain rate, and the admission decision."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        known: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``known(model)``: whether an engine serves the model (only those get state and labelled series, so a
        client's invented model names cannot grow the metrics)."""
        self._bound = settings.max_queued_audio_seconds
        self._default_retry_s = max(settings.retry_after_s, MIN_RETRY_AFTER_S)
        self._metrics, self._known, self._clock = metrics, known, clock
        self._models: dict[str, _ModelBacklog] = {}
        for model in settings.model_facts:  # `alm serve` names every served model here: series exist at 0
            self._state(model)

    def _state(self, model: str) -> _ModelBacklog:
        state = self._models.get(model)
        if state is None:
            self._metrics.add_model(model)
            state = self._models[model] = _ModelBacklog(_Series(self._metrics, model))
        return state

    def admit(self, model: str, audio_seconds: float) -> Ticket:
        """Count a request's audio as queued, or raise Overloaded (429 ``audio_backlog``)."""
        if audio_seconds <= 0 or (model not in self._models and not self._known(model)):
            return NO_TICKET
        state = self._state(model)
        state.series.received.inc(audio_seconds)
        if self._bound and state.queued > 0 and state.queued + audio_seconds > self._bound:
            state.series.rejections.inc()
            raise Overloaded(
                f"{state.queued:.0f} s of audio for model '{model}' are queued (the limit is {self._bound:g} s); "
                "retry later",
                retry_after_s=self._retry_after(state, state.queued + audio_seconds - self._bound),
                code="audio_backlog",
            )
        if state.queued <= 0:
            state.busy_since = self._clock()
        state.queued += audio_seconds
        state.in_flight += audio_seconds
        self._publish(state)
        return Ticket(self, model, audio_seconds)

    def _retry_after(self, state: _ModelBacklog, excess: float) -> int:
        """Seconds until ``excess`` audio seconds have drained at the measured rate (clamped)."""
        rate = state.rate(self._clock())
        if rate is None:  # nothing has drained yet: the gateway's usual Retry-After (ALM_RETRY_AFTER_S)
            return self._default_retry_s
        return min(max(math.ceil(excess / rate), MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def drain_rate(self, model: str) -> float | None:
        """Audio seconds per second the model's queue drains at (None: not measured yet)."""
        state = self._models.get(model)
        return state.rate() if state is not None else None

    def queued(self, model: str) -> float:
        state = self._models.get(model)
        return state.queued if state is not None else 0.0

    def _answered(self, model: str, seconds: float) -> None:
        state = self._models[model]
        now = self._clock()
        busy = max(now - max(state.last_drain, state.busy_since), 0.0)  # audio was queued all along
        decay = math.exp(-busy / DRAIN_WINDOW_S)
        state.drained = state.drained * decay + seconds
        state.busy = state.busy * decay + busy
        state.last_drain = now
        state.series.drain_rate.set(state.rate() or 0.0)
        self._dequeue(model, seconds)

    def _dequeue(self, model: str, seconds: float) -> None:
        state = self._models[model]
        state.queued = max(state.queued - seconds, 0.0)
        if state.queued < 1e-6:  # float sums: an empty queue is exactly empty
            state.queued = 0.0
        self._publish(state)

    def _land(self, model: str, seconds: float) -> None:
        state = self._models[model]
        state.in_flight = max(state.in_flight - seconds, 0.0)
        if state.in_flight < 1e-6:
            state.in_flight = 0.0
        self._publish(state)

    def _publish(self, state: _ModelBacklog) -> None:
        state.series.queued.set(state.queued)
        state.series.in_flight.set(state.in_flight)


class _Series:
    def __init__(self, metrics: Metrics, model: str) -> None:
        self.received = metrics.audio_received.labels(model)
        self.rejections = metrics.backlog_rejections.labels(model)
        self.queued = metrics.audio_queued.labels(model)
        self.in_flight = metrics.audio_in_flight.labels(model)
        self.drain_rate = metrics.audio_drain_rate.labels(model)
