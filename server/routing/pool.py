"""The engine pool: discovery, active health checks, ejection/re-admission and the routing policy's choice.

A failed request ejects its engine only when another healthy engine serves each of its models; a model's last
engine is *suspect* instead: it stays in rotation and is probed at once, and only a failed probe ejects it. So
one broken stream never turns every request into a 503 until the next health round.

Engines are grouped by the models they serve (each engine's ``/v1/models``). ``acquire()`` hands out a slot on
the healthy engine serving the model that the routing policy (server/routing/policies.py, ``ALM_ROUTING``) chooses among
those with room, from each engine's load in requests (server/routing/load.py: this gateway's own requests now
plus other gateways' as the engine reports them, smoothed over reports) and in work (server/work.py: tokens of
this gateway's requests on it, other gateways' valued at an average request's). An engine is given up to its
capacity: its batch (``max_num_seqs``) plus a short queue inside vLLM, where waiting requests join the batch as
soon as a sequence ends and where ``vllm:num_requests_waiting`` (the HPA's metric) counts them. When every
engine is at capacity the caller waits in the gateway's bounded queue (bursts), and a full queue is a 429.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from server.config import Settings
from server.errors import ModelNotFound, NoHealthyEngine, Overloaded
from server.guards.fields import quoted
from server.metrics import Metrics
from server.routing.load import EngineLoad, MetricsTooLarge, Report, read_report
from server.routing.policies import Candidate, make_policy, request_tokens
from server.work import NO_WORK, EngineWork, RequestWork

log = logging.getLogger("server.routing.pool")


@dataclass(eq=False)
class Engine:
    url: str
    name: str
    models: frozenset[str] = frozenset()
    max_model_len: dict[str, int] = field(default_factory=dict)
    """Per model, the context length its ``/v1/models`` card reports (vLLM's ``max_model_len``), where it does."""
    healthy: bool = False
    capacity: int = 1
    """Requests it is given at once: its batch plus the queue inside it (``Settings.engine_capacity``)."""
    load: EngineLoad = field(default_factory=EngineLoad)
    failures: int = 0
    last_pick: int = 0
    """The pool's pick count when it last picked this engine (routing ties go to the least recently picked)."""
    server_load: bool | None = None
    """Whether it answers ``/load`` (None: not asked yet)."""
    work: EngineWork = field(default_factory=lambda: EngineWork(0))
    """This gateway's outstanding work on it (tokens, audio seconds)."""
    progress_at: float = float("-inf")
    """``time.monotonic()`` when one of this gateway's requests on it last progressed (``EnginePool.progressed``)."""

    @property
    def outstanding(self) -> int:
        """This gateway's requests holding a slot on it."""
        return self.load.outstanding


class EnginePool:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self.engines: dict[str, Engine] = {}
        self.waiting = 0
        self._changed = asyncio.Event()
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._by_seed: dict[str, set[str]] = {}
        """DNS mode: the engines each seed resolved to last time (kept while its name does not resolve)."""
        self._policy = make_policy(settings.routing, settings.routing_epsilon, settings.routing_output_tokens)
        self._mean_work = float(settings.routing_output_tokens)
        """Tokens of an average request (moving average of those acquired): what another gateway's request on an
        engine is counted as."""
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
        loop = asyncio.get_running_loop()
        seen: set[str] = set()
        for seed in self._settings.engine_urls:
            parts = urlsplit(seed)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as exc:  # a DNS hiccup is not a scale-down: keep what this seed had
                log.warning("cannot resolve engine host %s: %s", parts.hostname, exc)
                seen |= self._by_seed.get(seed, set())
                continue
            found: set[str] = set()
            for *_, sockaddr in infos:
                address = str(sockaddr[0])
                host = f"[{address}]" if ":" in address else address
                url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
                found.add(url)
                self._add(url)
            self._by_seed[seed] = found
            seen |= found
        for url in [u for u, e in self.engines.items() if u not in seen and e.outstanding == 0]:
            # Its series go too: a scaled-down replica is gone, not unhealthy (alerts key on engine_healthy).
            self._metrics.remove_engine(self.engines.pop(url).name)

    # ------------------------------------------------------------------ health

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
                await self._read_load(engine, timeout)
        else:
            engine.failures += 1
            if probe or engine.failures >= self._settings.eject_after_failures or not engine.healthy:
                self._set_health(engine, False)

    def progressed(self, engine: Engine) -> None:
        """One of this gateway's requests on ``engine`` progressed: answered, or its stream's first event came."""
        engine.progress_at = time.monotonic()

    def _busy(self, engine: Engine) -> bool:
        """Whether ``engine`` holds this gateway's requests and one progressed within ``health_progress_grace_s``:
        a vLLM API server busy building large answers (or many) answers ``/health`` late, and ejecting it for
        that would only pile its load onto the others."""
        grace = self._settings.health_progress_grace_s
        return engine.outstanding > 0 and time.monotonic() - engine.progress_at <= grace

    async def _read_load(self, engine: Engine, timeout: aiohttp.ClientTimeout) -> None:
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
            self._max_report_age(),
        )
        self._metrics.engine_reported(engine.name, running, waiting)
        self._publish_load(engine)
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

    def load(self, engine: Engine) -> int:
        """Requests ``engine`` holds, every gateway's (a report older than two health rounds is ignored)."""
        return engine.load.estimate(time.monotonic(), self._max_report_age())

    def _max_report_age(self) -> float:
        return 2 * self._settings.health_interval_s + self._settings.health_timeout_s

    def work_of(self, engine: Engine, load: int | None = None) -> float:
        """Tokens of work ``engine`` holds: this gateway's requests' (exact) plus the others its load counts
        (other gateways', or reported but not yet finished) at an average request's work each."""
        load = self.load(engine) if load is None else load
        return engine.work.tokens + max(load - engine.outstanding, 0) * self._mean_work

    def _publish_load(self, engine: Engine) -> None:
        load = self.load(engine)
        self._metrics.engine_in_flight.labels(engine.name).set(engine.outstanding)
        self._metrics.engine_load.labels(engine.name).set(load)
        self._metrics.engine_work.labels(engine.name).set(self.work_of(engine, load))
        self._metrics.engine_audio_in_flight.labels(engine.name).set(engine.work.audio_seconds)

    async def check_all(self) -> None:
        await self.discover()
        await asyncio.gather(*(self.check(e) for e in list(self.engines.values())))

    async def run_health_checks(self) -> None:
        """Forever: check every engine, then sleep ``health_interval_s``. Cancelled by the app's lifespan,
        which also ends the probes of suspect engines."""
        try:
            while True:
                try:
                    await self.check_all()
                except Exception:  # a bug here must not stop health checking
                    log.exception("health check round failed")
                await asyncio.sleep(self._settings.health_interval_s)
        finally:
            for task in list(self._probes.values()):
                task.cancel()

    def suspect(self, engine: Engine, reason: str) -> None:
        """A request to ``engine`` failed in transport. If every model it serves has another healthy engine,
        eject it (health checks re-admit it, as usual); else keep it in rotation and probe it at once."""
        covered = all(
            any(other is not engine and other.healthy and model in other.models for other in self.engines.values())
            for model in engine.models
        )
        if covered:
            self.eject(engine, reason)
            return
        if engine.healthy:
            log.warning("engine %s is suspect (%s); probing it (the last engine of a model)", engine.name, reason)
        if engine.url not in self._probes:
            task = asyncio.get_running_loop().create_task(self.check(engine, probe=True))
            self._probes[engine.url] = task
            task.add_done_callback(lambda t: self._probe_done(engine.url, t))

    def _probe_done(self, url: str, task: asyncio.Task[None]) -> None:
        self._probes.pop(url, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("probe of engine %s failed", url, exc_info=task.exception())

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
            self._publish_load(engine)
        self._metrics.engine_healthy.labels(engine.name).set(1 if healthy else 0)
        self._notify()

    # ------------------------------------------------------------------ queries

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
                    if any(model in e.models for e in self.engines.values()) or not self._any_models_known():
                        raise NoHealthyEngine(f"no healthy engine is serving model {quoted(model)}")
                    raise ModelNotFound(f"The model {quoted(model)} does not exist", param="model")
                loads = [self.load(e) for e in candidates]
                if any(load < e.capacity for e, load in zip(candidates, loads, strict=True)):
                    return self._take(candidates, loads, work, retry=bool(exclude))
                if not queued:
                    if self.waiting >= self._settings.max_queue:
                        raise Overloaded(
                            "the gateway is at capacity; retry later", retry_after_s=self._settings.retry_after_s
                        )
                    queued = True
                    self.waiting += 1
                    self._metrics.queue_depth.set(self.waiting)
                await self._changed.wait()
        finally:
            if queued:
                self.waiting -= 1
                self._metrics.queue_depth.set(self.waiting)

    def _take(self, candidates: list[Engine], loads: list[int], work: RequestWork, retry: bool) -> Engine:
        views = [
            Candidate(e.url, load, self.work_of(e, load), e.last_pick, free=load < e.capacity)
            for e, load in zip(candidates, loads, strict=True)
        ]
        choice = self._policy.choose(views, work)
        if choice.affinity is not None and not retry:  # a retry's choice excludes engines already tried
            self._metrics.affinity.labels(choice.affinity).inc()
        engine = candidates[choice.index]
        self._metrics.engine_request_seconds.labels(engine.name).inc(engine.load.start(time.monotonic()))
        engine.work.add(work)
        self._picks += 1
        engine.last_pick = self._picks
        if work is not NO_WORK:
            self._mean_work += 0.05 * (request_tokens(work, self._settings.routing_output_tokens) - self._mean_work)
        self._publish_load(engine)
        return engine

    def first_token(self, engine: Engine, work: RequestWork) -> None:
        """The engine has sent a request's first token: its prefill is done and leaves the engine's work (call
        once per request and engine; then ``release(engine, work, prefilled=True)``)."""
        engine.work.first_token(work)
        self._publish_load(engine)

    def release(self, engine: Engine, work: RequestWork | None = None, prefilled: bool = False) -> None:
        """Give back a request's slot; ``work``: the request's (as given to ``acquire``; None: an average
        request's share is removed), ``prefilled``: ``first_token`` was called for it."""
        self._metrics.engine_request_seconds.labels(engine.name).inc(engine.load.finish(time.monotonic()))
        engine.work.remove(work, prefilled)
        self._publish_load(engine)
        self._notify()

    def _notify(self) -> None:
        """Wake every waiter to re-check (slots freed or health changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _any_models_known(self) -> bool:
        return any(e.models for e in self.engines.values())


def _max_model_lens(cards: list[Any]) -> dict[str, int]:
    """Model id → ``max_model_len`` from a ``/v1/models`` answer; cards without a positive integer one are left out."""
    return {
        card["id"]: length
        for card in cards
        if isinstance(card, dict) and type(length := card.get("max_model_len")) is int and length > 0
    }
