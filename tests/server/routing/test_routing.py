"""EnginePool unit tests: least-outstanding choice, model groups, bounded queue, ejection and re-admission."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import generate_latest

from server.config import load_settings
from server.errors import ModelNotFound, NoHealthyEngine, Overloaded
from server.metrics import Metrics
from server.relay.upstream import engine_session
from server.routing.pool import EnginePool
from tests.support.fakes import serve


@pytest.fixture
async def session():
    async with engine_session() as s:
        yield s


def make_pool(urls: list[str], models: list[set[str]] | None = None, **overrides) -> EnginePool:
    pool = EnginePool(load_settings(engine_urls=urls, **overrides), None, Metrics())  # type: ignore[arg-type]
    for engine, served in zip(pool.engines.values(), models or [{"m"}] * len(urls), strict=True):
        engine.models, engine.healthy = frozenset(served), True
    return pool


async def test_least_outstanding_spreads_load() -> None:
    pool = make_pool(["http://a:1", "http://b:1", "http://c:1"])
    picked = [await pool.acquire("m") for _ in range(6)]
    assert sorted(e.outstanding for e in pool.engines.values()) == [2, 2, 2]
    busiest = picked[0]
    pool.release(picked[1])  # b now has 1, the others 2
    assert (await pool.acquire("m")) is picked[1]
    assert busiest.outstanding == 2


async def test_models_group_engines() -> None:
    pool = make_pool(["http://a:1", "http://b:1"], [{"m1"}, {"m2"}])
    assert (await pool.acquire("m2")).url == "http://b:1"
    assert pool.served_models() == ["m1", "m2"]
    with pytest.raises(ModelNotFound) as info:
        await pool.acquire("other")
    assert (info.value.status, info.value.param) == (404, "model")
    pool.eject(pool.engines["http://a:1"], "test")
    with pytest.raises(NoHealthyEngine):
        await pool.acquire("m1")
    assert pool.served_models() == ["m2"]


async def test_excluded_engines_are_skipped() -> None:
    pool = make_pool(["http://a:1", "http://b:1"])
    assert (await pool.acquire("m", frozenset({"http://a:1"}))).url == "http://b:1"
    with pytest.raises(NoHealthyEngine):
        await pool.acquire("m", frozenset({"http://a:1", "http://b:1"}))


async def test_bounded_queue_then_429() -> None:
    pool = make_pool(["http://a:1"], max_inflight_per_engine=1, max_queue=1, retry_after_s=3)
    first = await pool.acquire("m")
    waiter = asyncio.create_task(pool.acquire("m"))
    while pool.waiting == 0:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await pool.acquire("m")
    assert info.value.status == 429 and info.value.headers() == {"Retry-After": "3"}
    pool.release(first)
    assert (await waiter) is first and pool.waiting == 0


async def test_waiters_fail_when_engines_go_away() -> None:
    pool = make_pool(["http://a:1"], max_inflight_per_engine=1)
    engine = await pool.acquire("m")
    waiter = asyncio.create_task(pool.acquire("m"))
    while pool.waiting == 0:
        await asyncio.sleep(0)
    pool.eject(engine, "test")
    with pytest.raises(NoHealthyEngine):
        await waiter


async def test_health_checks_eject_and_readmit(start_fake, session) -> None:
    fake, url = start_fake(model="m")
    pool = EnginePool(load_settings(engine_urls=[url], eject_after_failures=2), session, Metrics())
    await pool.check_all()
    engine = pool.engines[url]
    assert engine.healthy and engine.models == {"m"}
    fake.healthy = False
    await pool.check_all()
    assert engine.healthy  # one failure is tolerated
    await pool.check_all()
    assert not engine.healthy and not pool.ready()
    fake.healthy = True
    await pool.check_all()
    assert engine.healthy and pool.ready()


def slow_health_engine(delay_s: list[float]) -> FastAPI:
    """An engine serving model "m" whose ``/health`` answers after ``delay_s[0]`` seconds."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        await asyncio.sleep(delay_s[0])
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    return app


@pytest.mark.parametrize(
    ("holds", "progressed", "probe", "ejected"),
    [
        (True, True, False, False),  # busy answering this gateway's requests: a late /health is not a failure
        (True, False, False, True),  # holds requests but none progressed within the grace: hung
        (False, True, False, True),  # idle: late is a failure
        (True, True, True, True),  # a probe (a request to it failed in transport) is strict
    ],
)
async def test_a_late_health_check_of_a_busy_engine_does_not_eject_it(
    stack, session, holds: bool, progressed: bool, probe: bool, ejected: bool
) -> None:
    """The review's finding: an engine building a 90 MB answer took over 10 s to answer /health and was ejected."""
    delay_s = [0.0]
    url = stack.enter_context(serve(slow_health_engine(delay_s)))
    settings = load_settings(engine_urls=[url], health_timeout_s=0.3, eject_after_failures=2, engine_load_metrics=False)
    pool = EnginePool(settings, session, Metrics())
    await pool.check_all()
    engine = pool.engines[url]
    assert engine.healthy
    if holds:
        await pool.acquire("m")
    if progressed:
        pool.progressed(engine)
    delay_s[0] = 1.0
    for _ in range(2):
        await pool.check(engine, probe=probe)
    assert engine.healthy is not ejected
    delay_s[0] = 0.0
    await pool.check(engine)
    assert engine.healthy  # answering in time again: healthy either way


async def test_dns_expansion(start_fake, session) -> None:
    _, url = start_fake(model="m")
    port = url.rsplit(":", 1)[1]
    pool = EnginePool(
        load_settings(engine_urls=[f"http://localhost:{port}"], engine_dns_expand=True), session, Metrics()
    )
    await pool.check_all()
    assert f"http://127.0.0.1:{port}" in pool.engines
    assert pool.engines[f"http://127.0.0.1:{port}"].healthy


async def test_dns_discovery_adds_replicas_and_drops_vanished_ones_with_their_series(monkeypatch) -> None:
    """A compose/k8s service name resolves to one engine per address; a scaled-down replica
    leaves the pool and its engine_* series leave /metrics (it is gone, not unhealthy)."""
    addresses = ["10.0.0.1", "10.0.0.2"]

    async def getaddrinfo(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    metrics = Metrics()
    pool = EnginePool(load_settings(engine_urls=["http://engine:8000"], engine_dns_expand=True), None, metrics)  # type: ignore[arg-type]  # discovery only: no HTTP
    await pool.discover()
    assert sorted(pool.engines) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    addresses.pop()
    await pool.discover()
    assert list(pool.engines) == ["http://10.0.0.1:8000"]
    exported = generate_latest(metrics.registry).decode()
    assert 'engine="10.0.0.1:8000"' in exported and 'engine="10.0.0.2:8000"' not in exported


async def _settled(pool: EnginePool) -> None:
    await asyncio.gather(*list(pool.health.probes.values()))


async def test_suspect_keeps_a_models_last_engine_until_its_probe_fails(start_fake, session) -> None:
    fake, url = start_fake(model="m")
    pool = EnginePool(load_settings(engine_urls=[url]), session, Metrics())
    await pool.check_all()
    engine = pool.engines[url]
    pool.suspect(engine, "test")
    pool.suspect(engine, "test again")  # one probe at a time
    assert engine.healthy and len(pool.health.probes) == 1
    await _settled(pool)
    assert engine.healthy and fake.health_checks == 2  # the probe passed: still in rotation
    fake.healthy = False
    pool.suspect(engine, "test")
    assert engine.healthy
    await _settled(pool)
    assert not engine.healthy and not pool.ready()  # one failed probe ejects (eject_after_failures is 2)


async def test_suspect_ejects_at_once_only_when_another_engine_serves_every_model(start_fake, session) -> None:
    _, a_url = start_fake(model="m1")
    _, b_url = start_fake(model="m1")
    pool = EnginePool(load_settings(engine_urls=[a_url, b_url]), session, Metrics())
    await pool.check_all()
    a, b = pool.engines[a_url], pool.engines[b_url]
    a.models = frozenset({"m1", "m2"})  # b cannot stand in for m2
    pool.suspect(a, "test")
    assert a.healthy
    await _settled(pool)
    a.models = frozenset({"m1"})
    pool.suspect(a, "test")
    assert not a.healthy and not pool.health.probes and (await pool.acquire("m1")) is b  # routed around at once
    await pool.check_all()
    assert a.healthy  # the next health round re-admits it


async def test_dns_failure_keeps_that_seeds_engines(monkeypatch) -> None:
    """One seed's name failing to resolve (a DNS hiccup) keeps its engines; the other seeds still refresh."""
    table: dict[str, list[str] | None] = {"a": ["10.0.0.1", "10.0.0.2"], "b": ["10.0.1.1"]}

    async def getaddrinfo(host, port, **kwargs):
        if table[host] is None:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in table[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    settings = load_settings(engine_urls=["http://a:8000", "http://b:9000"], engine_dns_expand=True)
    pool = EnginePool(settings, None, Metrics())  # type: ignore[arg-type]  # discovery only: no HTTP
    await pool.discover()
    table["a"], table["b"] = None, ["10.0.1.2"]
    await pool.discover()
    assert sorted(pool.engines) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.1.2:9000"]
    table["a"] = ["10.0.0.2"]
    await pool.discover()
    assert sorted(pool.engines) == ["http://10.0.0.2:8000", "http://10.0.1.2:9000"]
