"""The engine pool: discovery, active health checks, ejection/re-admission and least-outstanding choice.

Engines are grouped by the models they serve (each engine's ``/v1/models``). ``acquire()`` hands out a slot on
the healthy engine serving the model with the fewest outstanding requests; when every such engine is at its
in-flight bound the caller waits in a bounded queue, and a full queue is a 429.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from server.config import Settings
from server.errors import ModelNotFound, NoHealthyEngine, Overloaded
from server.metrics import Metrics

log = logging.getLogger("server.routing")


@dataclass(eq=False)
class Engine:
    url: str
    name: str
    models: frozenset[str] = frozenset()
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    picks: int = 0


class EnginePool:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self.engines: dict[str, Engine] = {}
        self.waiting = 0
        self._changed = asyncio.Event()
        if not settings.engine_dns_expand:
            for url in settings.engine_urls:
                self._add(url)

    # ------------------------------------------------------------------ membership

    def _add(self, url: str) -> Engine:
        if url not in self.engines:
            parts = urlsplit(url)
            self.engines[url] = Engine(url=url, name=parts.netloc or url)
            self._metrics.add_engine(self.engines[url].name)
        return self.engines[url]

    async def discover(self) -> None:
        """DNS mode: every address of every engine host becomes an engine; vanished idle ones are dropped."""
        if not self._settings.engine_dns_expand:
            return
        loop = asyncio.get_running_loop()
        seen: set[str] = set()
        for seed in self._settings.engine_urls:
            parts = urlsplit(seed)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve engine host %s: %s", parts.hostname, exc)
                continue
            for *_, sockaddr in infos:
                host = f"[{sockaddr[0]}]" if ":" in sockaddr[0] else sockaddr[0]
                url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
                seen.add(url)
                self._add(url)
        for url in [u for u, e in self.engines.items() if u not in seen and e.outstanding == 0]:
            # Its series go too: a scaled-down replica is gone, not unhealthy (alerts key on engine_healthy).
            self._metrics.remove_engine(self.engines.pop(url).name)

    # ------------------------------------------------------------------ health

    async def check(self, engine: Engine) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.health_timeout_s)
        try:
            async with self._session.get(engine.url + "/health", timeout=timeout) as resp:
                ok = resp.status == 200
            if ok and (not engine.healthy or not engine.models):
                async with self._session.get(engine.url + "/v1/models", timeout=timeout) as models:
                    models.raise_for_status()
                    engine.models = frozenset(m["id"] for m in (await models.json(content_type=None))["data"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            engine.failures = 0
            self._set_health(engine, True)
        else:
            engine.failures += 1
            if engine.failures >= self._settings.eject_after_failures or not engine.healthy:
                self._set_health(engine, False)

    async def check_all(self) -> None:
        await self.discover()
        await asyncio.gather(*(self.check(e) for e in list(self.engines.values())))

    async def run_health_checks(self) -> None:
        """Forever: check every engine, then sleep ``health_interval_s``. Cancelled by the app's lifespan."""
        while True:
            try:
                await self.check_all()
            except Exception:  # a bug here must not stop health checking
                log.exception("health check round failed")
            await asyncio.sleep(self._settings.health_interval_s)

    def eject(self, engine: Engine, reason: str) -> None:
        """Passive ejection after a failed request; the next passing health check re-admits the engine."""
        if engine.healthy:
            log.warning("ejecting engine %s: %s", engine.name, reason)
        engine.failures = max(engine.failures, self._settings.eject_after_failures)
        self._set_health(engine, False)

    def _set_health(self, engine: Engine, healthy: bool) -> None:
        if engine.healthy != healthy:
            log.info("engine %s is %s (models: %s)", engine.name, "healthy" if healthy else "unhealthy",
                     ",".join(sorted(engine.models)) or "-")
        engine.healthy = healthy
        self._metrics.engine_healthy.labels(engine.name).set(1 if healthy else 0)
        self._notify()

    # ------------------------------------------------------------------ queries

    def ready(self) -> bool:
        return any(e.healthy for e in self.engines.values())

    def served_models(self) -> list[str]:
        return sorted({m for e in self.engines.values() if e.healthy for m in e.models})

    # ------------------------------------------------------------------ slots

    async def acquire(self, model: str, exclude: frozenset[str] = frozenset()) -> Engine:
        """A slot on the least-loaded healthy engine serving ``model`` (not in ``exclude``); waits if all busy.

        Raises ModelNotFound (no engine has ever served it), NoHealthyEngine, or Overloaded (queue full).
        """
        limit = self._settings.max_inflight_per_engine
        queued = False
        try:
            while True:
                candidates = [e for e in self.engines.values()
                              if e.healthy and model in e.models and e.url not in exclude]
                if not candidates:
                    if any(model in e.models for e in self.engines.values()) or not self._any_models_known():
                        raise NoHealthyEngine(f"no healthy engine is serving model '{model}'")
                    raise ModelNotFound(f"The model '{model}' does not exist", param="model")
                free = [e for e in candidates if e.outstanding < limit]
                if free:
                    engine = min(free, key=lambda e: (e.outstanding, e.picks))
                    engine.outstanding += 1
                    engine.picks += 1
                    self._metrics.engine_in_flight.labels(engine.name).set(engine.outstanding)
                    return engine
                if not queued:
                    if self.waiting >= self._settings.max_queue:
                        raise Overloaded("the gateway is at capacity; retry later",
                                         retry_after_s=self._settings.retry_after_s)
                    queued = True
                    self.waiting += 1
                    self._metrics.queue_depth.set(self.waiting)
                await self._changed.wait()
        finally:
            if queued:
                self.waiting -= 1
                self._metrics.queue_depth.set(self.waiting)

    def release(self, engine: Engine) -> None:
        engine.outstanding -= 1
        self._metrics.engine_in_flight.labels(engine.name).set(engine.outstanding)
        self._notify()

    def _notify(self) -> None:
        """Wake every waiter to re-check (slots freed or health changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _any_models_known(self) -> bool:
        return any(e.models for e in self.engines.values())
