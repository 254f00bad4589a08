"""Routing policies (server/routing/policies/) as pure functions, and through the pool against scriptable fake
engines."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from server.config import load_settings
from server.errors import Overloaded
from server.routing.policies import Affinity, Candidate, LeastRequest, LeastWork, make_policy, rendezvous_order
from server.work import RequestWork
from tests.server.routing.test_routing import make_pool
from tests.support.audio_synth import audio_part, chat_body

URLS = [f"http://engine-{i}:8000" for i in range(5)]


def key(i: int) -> bytes:
    return i.to_bytes(16, "little")


def clip(seconds: float, *, key_: bytes | None = None, output: int | None = 16) -> RequestWork:
    """A request with ``seconds`` of audio at MiDashengLM's 5 tokens per second."""
    return RequestWork(
        audio_seconds=seconds, audio_tokens=int(seconds * 5), text_tokens=10, output_tokens=output, affinity_key=key_
    )


def test_rendezvous_moves_about_one_nth_of_keys_when_an_engine_comes_or_goes() -> None:
    keys = [key(i) for i in range(4000)]
    five = {k: URLS[rendezvous_order(k, URLS)[0]] for k in keys}
    assert all(rendezvous_order(k, URLS)[0] == rendezvous_order(k, URLS)[0] for k in keys[:50])  # deterministic
    counts = {url: list(five.values()).count(url) for url in URLS}
    assert min(counts.values()) > 4000 / 5 * 0.8  # spread over all five
    four = URLS[:4]
    moved = [k for k in keys if five[k] != four[rendezvous_order(k, four)[0]]]
    assert {five[k] for k in moved} == {URLS[4]}  # only the removed engine's keys move
    six = [*URLS, "http://engine-5:8000"]
    gained = [k for k in keys if five[k] != six[rendezvous_order(k, six)[0]]]
    assert 4000 / 6 * 0.8 < len(gained) < 4000 / 6 * 1.2
    assert all(six[rendezvous_order(k, six)[0]] == "http://engine-5:8000" for k in gained)  # all to the new one


def views(*works: float, free: tuple[bool, ...] | None = None, requests: tuple[int, ...] | None = None):
    return [
        Candidate(URLS[i], requests[i] if requests else 0, w, 0, free[i] if free else True) for i, w in enumerate(works)
    ]


def test_least_work_prefers_less_audio_over_fewer_requests() -> None:
    candidates = views(600, 60, requests=(1, 4))  # one 120 s clip vs four 3 s clips
    assert LeastWork().choose(candidates, clip(3)).index == 1
    assert LeastRequest().choose(candidates, clip(3)).index == 0


def test_policies_choose_only_free_engines() -> None:
    candidates = views(0, 500, free=(False, True))
    for name in ("least-request", "least-work", "affinity", "affinity-least-work"):
        for i in range(20):
            assert make_policy(name, 0.5, 16).choose(candidates, clip(5, key_=key(i))).index == 1


def test_affinity_is_sticky_and_bounded() -> None:
    policy = Affinity(0.25, LeastRequest(), False, 16)
    request = clip(60, key_=key(7))
    first = rendezvous_order(key(7), URLS[:3])[0]
    idle = views(0, 0, 0)
    assert policy.choose(idle, request).index == first
    assert policy.choose(idle, request).affinity == "hit"
    # Slightly busier than the others: within (1 + ε) × the average, still the same engine.
    busy = [0.0, 0.0, 0.0]
    busy[first] = 200
    assert policy.choose(views(*busy), request).index == first
    # Far above the average: skipped for the next in rendezvous order, counted as a miss.
    busy[first] = 5000
    second = rendezvous_order(key(7), URLS[:3])[1]
    assert (policy.choose(views(*busy), request).index, policy.choose(views(*busy), request).affinity) == (
        second,
        "miss",
    )
    # The combined default spills to least work instead of the next in order.
    spill = make_policy("affinity-least-work", 0.25, 16)
    others = [i for i in range(3) if i != first]
    loads = [0.0, 0.0, 0.0]
    loads[first], loads[others[0]], loads[others[1]] = 5000, 300, 100
    assert spill.choose(views(*loads), request).index == others[1]


def test_requests_without_audio_use_the_fallback() -> None:
    candidates = views(900, 100, requests=(1, 3))
    assert make_policy("affinity", 0.5, 16).choose(candidates, clip(0)).index == 0  # least requests
    assert make_policy("affinity-least-work", 0.5, 16).choose(candidates, clip(0)).affinity is None
    assert make_policy("affinity-least-work", 0.5, 16).choose(candidates, clip(0)).index == 1  # least work


# ---------------------------------------------------------------- through the pool


async def test_ties_go_round_robin_not_to_the_engine_that_served_fewer() -> None:
    """A slow replica served fewer requests (each held its slot longer); once both are idle again, ties must
    alternate, not all go to it until the counts even out (least-request keeps requests in flight even; how
    many each serves follows its speed)."""
    pool = make_pool(["http://a:1", "http://b:1"])
    a, b = pool.engines.values()
    first = await pool.acquire("m")  # a: held for a long time (slow)
    assert first is a
    for _ in range(5):  # b serves five while a works on one
        assert (await pool.acquire("m")) is b
        pool.release(b)
    pool.release(a)
    picked = []
    for _ in range(4):
        engine = await pool.acquire("m")
        picked.append(engine.url)
        pool.release(engine)
    assert picked == ["http://a:1", "http://b:1", "http://a:1", "http://b:1"]


async def test_pool_least_work_sends_short_clips_away_from_the_long_one() -> None:
    pool = make_pool(["http://a:1", "http://b:1"], routing="least-work")
    long = await pool.acquire("m", work=clip(120))
    shorts = [await pool.acquire("m", work=clip(3)) for _ in range(4)]
    assert all(e is not long for e in shorts)  # 4 short clips (4 × 41 tokens) < one long (626 tokens)
    pool.release(long, clip(120))
    assert long.work.tokens == 0 and long.work.audio_seconds == 0
    requests = make_pool(["http://a:1", "http://b:1"], routing="least-request")
    long = await requests.acquire("m", work=clip(120))
    picked = [await requests.acquire("m", work=clip(3)) for _ in range(4)]
    assert sum(e is long for e in picked) == 2  # alternates, blind to the long clip


async def test_pool_first_token_and_release_account_work_and_audio_metrics() -> None:
    pool = make_pool(["http://a:1"], routing="least-work", routing_output_tokens=100)
    a = await pool.acquire("m", work=clip(60, output=None))
    b = await pool.acquire("m", work=clip(10))
    assert a is b and a.work.tokens == (300 + 10 + 100) + (50 + 10 + 16)
    text = generate_latest(pool._metrics.registry).decode()
    assert 'alm_gateway_engine_audio_in_flight_seconds{engine="a:1"} 70.0' in text
    pool.first_token(a, clip(60, output=None))
    assert a.work.prefill == 60
    pool.release(a, clip(60, output=None), prefilled=True)
    assert (a.work.prefill, a.work.decode, a.work.audio_seconds) == (60, 16, 10)
    pool.release(b)  # without its work: the totals return to zero with the engine's last request
    assert (a.work.tokens, a.work.audio_seconds) == (0, 0)


async def test_pool_counts_affinity_hits_and_misses_and_keeps_the_429() -> None:
    pool = make_pool(["http://a:1", "http://b:1"], routing="affinity", max_inflight_per_engine=1, max_queue=0)
    text = generate_latest(pool._metrics.registry).decode()
    assert 'alm_gateway_affinity_requests_total{result="miss"} 0.0' in text
    request = clip(60, key_=key(3))
    first = await pool.acquire("m", work=request)
    second = await pool.acquire("m", work=request)  # the first choice is full: a miss
    assert second is not first
    text = generate_latest(pool._metrics.registry).decode()
    assert 'alm_gateway_affinity_requests_total{result="hit"} 1.0' in text
    assert 'alm_gateway_affinity_requests_total{result="miss"} 1.0' in text
    with pytest.raises(Overloaded):  # both full, no queue: the same 429 as before policies
        await pool.acquire("m", work=request)
    pool.release(second, request)
    retry = await pool.acquire("m", frozenset({first.url}), request)  # a retry elsewhere is neither hit nor miss
    assert retry is second
    assert 'alm_gateway_affinity_requests_total{result="hit"} 1.0' in generate_latest(pool._metrics.registry).decode()


def test_alm_routing_selects_the_policy(monkeypatch) -> None:
    monkeypatch.setenv("ALM_ROUTING", "least-work")
    assert load_settings().routing == "least-work"
    assert load_settings(routing="affinity").routing == "affinity"
    assert load_settings(engine_urls=["http://x:1"]).routing == "least-work"
    monkeypatch.setenv("ALM_ROUTING", "round-robin")
    with pytest.raises(ValidationError):
        load_settings()
    monkeypatch.delenv("ALM_ROUTING")
    assert load_settings().routing == "affinity-least-work"


async def both_healthy(client: httpx.AsyncClient, gateway: str) -> None:
    for _ in range(200):
        text = (await client.get(gateway + "/metrics")).text
        healthy = [ln for ln in text.splitlines() if ln.startswith("alm_gateway_engine_healthy{")]
        if len(healthy) == 2 and all(ln.endswith(" 1.0") for ln in healthy):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("engines not healthy")


async def test_affinity_through_the_gateway_against_fake_engines(start_fake, start_gateway) -> None:
    """Same clip → same fake engine every time under affinity; least-request alternates."""
    fakes = [start_fake() for _ in range(2)]
    urls = [url for _, url in fakes]
    body = chat_body("fake-model", audio_part(seconds=2.0), max_tokens=4)
    for routing, same in (("affinity", True), ("least-request", False)):
        for engine, _ in fakes:
            engine.bodies.clear()
        gateway = start_gateway(urls, routing=routing)
        async with httpx.AsyncClient(timeout=30) as client:
            await both_healthy(client, gateway)
            for _ in range(4):
                resp = await client.post(gateway + "/v1/chat/completions", json=body)
                assert resp.status_code == 200, resp.text
        served = sorted(len(engine.bodies) for engine, _ in fakes)
        assert served == ([0, 4] if same else [2, 2]), (routing, served)
