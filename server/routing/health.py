"""Engine health: active checks, the probe of a suspect engine, ejection and re-admission.

Each health round checks every engine's ``/health`` (and learns its models from ``/v1/models``); a passing check
re-admits it and reads its load reports (server/routing/load_reports.py), ``eject_after_failures`` failing ones
eject it. A check that times out while the engine is busy answering this gateway's requests is not counted.

A failed request ejects its engine only when another healthy engine serves each of its models; a model's last
engine is *suspect* instead: it stays in rotation and is probed at once, and only a failed probe ejects it. So
one broken stream never turns every request into a 503 until the next health round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from server.config import Settings
from server.metrics import Metrics
from server.routing.engine import Engine
from server.routing.ledger import Ledger
from server.routing.load_reports import LoadReader

log = logging.getLogger("server.routing.pool")  # the pool's logger: its log lines read as before the split


class HealthChecker:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        engines: Mapping[str, Engine],
        ledger: Ledger,
        notify: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._engines = engines
        self._ledger = ledger
        self._notify = notify
        self._reader = LoadReader(settings, session, metrics, ledger, notify)
        self.probes: dict[str, asyncio.Task[None]] = {}
        """The probes of suspect engines in flight, by engine URL (one at a time each)."""

    async def check(self, engine: Engine, *, probe: bool = False) -> None:
        """One health check; ``probe``: of a suspect engine, which a single failure ejects."""
        timeout = aiohttp.ClientTimeout(total=self._settings.health_timeout_s)
        try:
            async with self._session.get(engine.url + "/health", timeout=timeout) as resp:
                ok = resp.status == 200
            if ok and (not engine.healthy or not engine.models):
                async with self._session.get(engine.url + "/v1/models", timeout=timeout) as models:
                    models.raise_for_status()
                    cards = (await models.json(content_type=None))["data"]
                    engine.models = frozenset(m["id"] for m in cards)
                    engine.max_model_len = _max_model_lens(cards)
        except TimeoutError as exc:
            ok = False
            busy = not probe and not isinstance(exc, aiohttp.ConnectionTimeoutError) and self._busy(engine)
            if busy:  # late, not failed: it is answering this gateway's requests
                log.info("engine %s: health check timed out while it is busy; not counted", engine.name)
                return
        except (aiohttp.ClientError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            engine.failures = 0
            self._set_health(engine, True)
            if self._settings.engine_load_metrics and not probe:
                await self._reader.read(engine, timeout)
        else:
            engine.failures += 1
            if probe or engine.failures >= self._settings.eject_after_failures or not engine.healthy:
                self._set_health(engine, False)

    async def check_all(self) -> None:
        """One health round: every engine checked at once."""
        await asyncio.gather(*(self.check(e) for e in list(self._engines.values())))

    def progressed(self, engine: Engine) -> None:
        """One of this gateway's requests on ``engine`` progressed: answered, or its stream's first event came."""
        engine.progress_at = time.monotonic()

    def _busy(self, engine: Engine) -> bool:
        """Whether ``engine`` holds this gateway's requests and one progressed within ``health_progress_grace_s``:
        a vLLM API server busy building large answers (or many) answers ``/health`` late, and ejecting it for
        that would only pile its load onto the others."""
        grace = self._settings.health_progress_grace_s
        return engine.outstanding > 0 and time.monotonic() - engine.progress_at <= grace

    def suspect(self, engine: Engine, reason: str) -> None:
        """A request to ``engine`` failed in transport. If every model it serves has another healthy engine,
        eject it (health checks re-admit it, as usual); else keep it in rotation and probe it at once."""
        covered = all(
            any(other is not engine and other.healthy and model in other.models for other in self._engines.values())
            for model in engine.models
        )
        if covered:
            self.eject(engine, reason)
            return
        if engine.healthy:
            log.warning("engine %s is suspect (%s); probing it (the last engine of a model)", engine.name, reason)
        if engine.url not in self.probes:
            task = asyncio.get_running_loop().create_task(self.check(engine, probe=True))
            self.probes[engine.url] = task
            task.add_done_callback(lambda t: self._probe_done(engine.url, t))

    def _probe_done(self, url: str, task: asyncio.Task[None]) -> None:
        self.probes.pop(url, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("probe of engine %s failed", url, exc_info=task.exception())

    async def run(self, check_round: Callable[[], Awaitable[None]]) -> None:
        """Forever: ``check_round()`` (the pool's: discovery, then every engine checked), then sleep
        ``health_interval_s``. Cancelled by the app's lifespan; ends the probes of suspect engines too."""
        try:
            while True:
                try:
                    await check_round()
                except Exception:  # a bug here must not stop health checking
                    log.exception("health check round failed")
                await asyncio.sleep(self._settings.health_interval_s)
        finally:
            for task in list(self.probes.values()):
                task.cancel()

    def eject(self, engine: Engine, reason: str) -> None:
        """Out of rotation at once; the next passing health check (or probe) re-admits the engine."""
        if engine.healthy:
            log.warning("ejecting engine %s: %s", engine.name, reason)
        engine.failures = max(engine.failures, self._settings.eject_after_failures)
        self._set_health(engine, False)

    def _set_health(self, engine: Engine, healthy: bool) -> None:
        if engine.healthy != healthy:
            log.info(
                "engine %s is %s (models: %s)",
                engine.name,
                "healthy" if healthy else "unhealthy",
                ",".join(sorted(engine.models)) or "-",
            )
        engine.healthy = healthy
        if not healthy:
            engine.load.forget()
            self._metrics.engine_reported(engine.name, 0, 0)
            self._ledger.publish(engine)
        self._metrics.engine_healthy.labels(engine.name).set(1 if healthy else 0)
        self._notify()


def _max_model_lens(cards: list[Any]) -> dict[str, int]:
    """Model id → ``max_model_len`` from a ``/v1/models`` answer; cards without a positive integer one are left out."""
    return {
        card["id"]: length
        for card in cards
        if isinstance(card, dict) and type(length := card.get("max_model_len")) is int and length > 0
    }
