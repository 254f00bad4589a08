"""The engine pool: its engines, grouped by the models they serve, and a slot on one for each request.

``acquire()`` hands out a slot on the healthy engine serving the model that the routing policy
(server/routing/policies/, ``ALM_ROUTING``) chooses among those with room, from each engine's load in requests and
in work (server/routing/ledger.py). An engine is given up to its capacity: its batch (``max_num_seqs``) plus a
short queue inside vLLM, where waiting requests join the batch as soon as a sequence ends and where
``vllm:num_requests_waiting`` (the HPA's metric) counts them. When every engine is at capacity the caller waits in
the gateway's bounded queue (server/routing/queue.py). The pool composes the rest: membership by DNS
(discovery.py), health checks, probes and ejection (health.py, ``pool.health``; it reads the engines' own load
reports, load_reports.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp

from server.config import Settings
from server.errors import ModelNotFound, NoHealthyEngine
from server.guards.fields import quoted
from server.metrics import Metrics
from server.routing.discovery import Discovery
from server.routing.engine import Engine
from server.routing.health import HealthChecker
from server.routing.ledger import Ledger
from server.routing.policies import Candidate, make_policy
from server.routing.queue import SlotQueue
from server.work import NO_WORK, EngineWork, RequestWork

log = logging.getLogger("server.routing.pool")


class EnginePool:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.engines: dict[str, Engine] = {}
        self._queue = SlotQueue(settings, metrics)
        self._discovery = Discovery(settings.engine_urls)
        self._ledger = Ledger(settings, metrics)
        self.health = HealthChecker(settings, session, metrics, self.engines, self._ledger, self._queue.notify)
        self._policy = make_policy(settings.routing, settings.routing_epsilon, settings.routing_output_tokens)
        self._picks = 0
        if not settings.engine_dns_expand:
            for url in settings.engine_urls:
                self._add(url)

    # ------------------------------------------------------------------ membership

    def _add(self, url: str) -> Engine:
        if url not in self.engines:
            parts = urlsplit(url)
            self.engines[url] = Engine(
                url=url,
                name=parts.netloc or url,
                capacity=self._settings.engine_capacity,
                work=EngineWork(self._settings.routing_output_tokens),
            )
            self._metrics.add_engine(self.engines[url].name)
        return self.engines[url]

    async def discover(self) -> None:
        """DNS mode: every address of every engine host becomes an engine; vanished idle ones are dropped."""
        if not self._settings.engine_dns_expand:
            return
        seen = await self._discovery.resolve(self._add)
        for url in [u for u, e in self.engines.items() if u not in seen and e.outstanding == 0]:
            # Its series go too: a scaled-down replica is gone, not unhealthy (alerts key on engine_healthy).
            self._metrics.remove_engine(self.engines.pop(url).name)

    async def check_all(self) -> None:
        """One health round: DNS discovery, then every engine checked."""
        await self.discover()
        await self.health.check_all()

    async def run_health_checks(self) -> None:
        """Forever: a health round every ``health_interval_s``; cancelled by the app's lifespan."""
        await self.health.run(self.check_all)

    # ------------------------------------------------------------------ health (server/routing/health.py)

    async def check(self, engine: Engine, *, probe: bool = False) -> None:
        await self.health.check(engine, probe=probe)

    def progressed(self, engine: Engine) -> None:
        self.health.progressed(engine)

    def suspect(self, engine: Engine, reason: str) -> None:
        self.health.suspect(engine, reason)

    def eject(self, engine: Engine, reason: str) -> None:
        self.health.eject(engine, reason)

    # ------------------------------------------------------------------ queries

    @property
    def waiting(self) -> int:
        """Requests in the gateway's queue for a slot."""
        return self._queue.waiting

    def load(self, engine: Engine) -> int:
        return self._ledger.load(engine)

    def work_of(self, engine: Engine, load: int | None = None) -> float:
        return self._ledger.work_of(engine, load)

    def ready(self) -> bool:
        return any(e.healthy for e in self.engines.values())

    def max_model_len(self, model: str) -> int | None:
        """The smallest context length the engines of ``model`` report (a request must fit any of them); None
        when none reports one."""
        return min((e.max_model_len[model] for e in self.engines.values() if model in e.max_model_len), default=None)

    def max_model_lens(self) -> dict[str, int]:
        """``max_model_len`` of every model that has one."""
        models = {m for e in self.engines.values() for m in e.max_model_len}
        return {m: length for m in models if (length := self.max_model_len(m)) is not None}

    def served_models(self) -> list[str]:
        return sorted({m for e in self.engines.values() if e.healthy for m in e.models})

    def known_models(self) -> frozenset[str]:
        """Every model an engine has served (healthy or not); empty while no engine's models are known yet."""
        return frozenset(m for e in self.engines.values() for m in e.models)

    # ------------------------------------------------------------------ slots

    async def acquire(self, model: str, exclude: frozenset[str] = frozenset(), work: RequestWork = NO_WORK) -> Engine:
        """A slot on the healthy engine serving ``model`` (not in ``exclude``) that the routing policy chooses
        for a request of ``work``; waits while every one is at capacity.

        Raises ModelNotFound (no engine has ever served it), NoHealthyEngine, or Overloaded (queue full).
        """
        queued = False
        try:
            while True:
                candidates = [
                    e for e in self.engines.values() if e.healthy and model in e.models and e.url not in exclude
                ]
                if not candidates:
                    check_served(model, self.known_models())
                    raise NoHealthyEngine(f"no healthy engine is serving model {quoted(model)}")
                loads = [self.load(e) for e in candidates]
                if any(load < e.capacity for e, load in zip(candidates, loads, strict=True)):
                    return self._take(candidates, loads, work, retry=bool(exclude))
                if not queued:
                    self._queue.join()
                    queued = True
                await self._queue.changed()
        finally:
            if queued:
                self._queue.leave()

    def _take(self, candidates: list[Engine], loads: list[int], work: RequestWork, retry: bool) -> Engine:
        views = [
            Candidate(e.url, load, self.work_of(e, load), e.last_pick, free=load < e.capacity)
            for e, load in zip(candidates, loads, strict=True)
        ]
        choice = self._policy.choose(views, work)
        if choice.affinity is not None and not retry:  # a retry's choice excludes engines already tried
            self._metrics.affinity.labels(choice.affinity).inc()
        engine = candidates[choice.index]
        self._picks += 1
        engine.last_pick = self._picks
        self._ledger.start(engine, work)
        return engine

    def first_token(self, engine: Engine, work: RequestWork) -> None:
        """The engine has sent a request's first token: its prefill is done and leaves the engine's work (call
        once per request and engine; then ``release(engine, work, prefilled=True)``)."""
        self._ledger.first_token(engine, work)

    def release(self, engine: Engine, work: RequestWork | None = None, prefilled: bool = False) -> None:
        """Give back a request's slot; ``work``: the request's (as given to ``acquire``; None: an average
        request's share is removed), ``prefilled``: ``first_token`` was called for it."""
        self._ledger.finish(engine, work, prefilled)
        self._queue.notify()


def check_served(model: str, known: frozenset[str]) -> None:
    """404 for a model no engine has served (``known``: ``EnginePool.known_models``, or a snapshot of it taken for
    the ingest thread, so the gateway can refuse before any audio is decoded). While no engine's models are known
    yet (all down since start) it passes: the pool then answers 503."""
    if known and model not in known:
        raise ModelNotFound(f"The model {quoted(model)} does not exist", param="model")
