"""The compose stack for real: the CPU image, 2 → 3 engine replicas on the tiny checkpoint, one then two gateways,
Prometheus, driven through the gateways' published ports with the openai SDK.

The tests share one stack (tests/containers/conftest.py) and run in file order: serving, two gateways, Prometheus,
scale-up, an engine killed under load, and last `down`, which must leave nothing behind.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.containers.stack import ENGINE_START_TIMEOUT_S, SERVED_MODEL, Stack, run, tool, wait_for
from tests.server.audio_synth import audio_part, encode, tone

pytestmark = pytest.mark.containers


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(base_url: str, seconds: float = 1.0) -> str:
    reply = client(base_url).chat.completions.create(
        model=SERVED_MODEL,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": [audio_part("wav", seconds), {"type": "text", "text": "Hear?"}]}],
    )  # type: ignore[list-item]  # the SDK's TypedDicts accept this dict shape
    (choice,) = reply.choices
    return choice.message.content or ""


def engine_counts(stack: Stack) -> dict[str, float]:
    return {name: stack.engine_requests(name) for name in stack.containers("engine")}


def test_chat_with_input_audio_non_streamed(stack: Stack):
    (gateway,) = stack.gateway_urls()
    reply = client(gateway).chat.completions.create(
        model=SERVED_MODEL,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": [audio_part("flac", 1.5), {"type": "text", "text": "Hear?"}]}],
    )  # type: ignore[list-item]
    assert reply.model == SERVED_MODEL
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.choices[0].finish_reason == "length"


def test_chat_with_input_audio_streamed(stack: Stack):
    (gateway,) = stack.gateway_urls()
    chunks = list(
        client(gateway).chat.completions.create(
            model=SERVED_MODEL,
            max_tokens=4,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": [audio_part("wav", 1.0), {"type": "text", "text": "Hear?"}]}],
        )
    )  # type: ignore[call-overload]
    assert chunks and all(chunk.model == SERVED_MODEL for chunk in chunks)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["length"]


def test_transcription(stack: Stack):
    (gateway,) = stack.gateway_urls()
    wav = io.BytesIO(encode(tone(2.0), 16_000, "wav"))
    wav.name = "clip.wav"
    result = client(gateway).audio.transcriptions.create(model=SERVED_MODEL, file=wav)
    assert isinstance(result.text, str)


def test_bad_audio_is_a_400_through_the_container(stack: Stack):
    (gateway,) = stack.gateway_urls()
    body = {
        "model": SERVED_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}],
            }
        ],
    }
    response = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].input_audio.data"


def test_two_gateways_spread_requests_over_the_same_engines(stack: Stack):
    stack.up(engines=2, gateways=2)
    gateways = stack.gateway_urls()
    assert len(gateways) == 2
    for url in gateways:
        wait_for(lambda url=url: stack.healthy_engines(url) == 2, 60, f"gateway {url} to see 2 engines")
    before = engine_counts(stack)
    # 4 clients per gateway at once, over several health rounds (1 s) where each gateway learns the other's load.
    total = 192
    targets = [gateways[i % 2] for i in range(total)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(chat, targets))
    assert len(replies) == total
    served = {name: count - before[name] for name, count in engine_counts(stack).items()}
    assert sum(served.values()) == total, served
    # Not an even split: least-request sends fewer to a slower replica, and on 2 shared cores the OS makes one
    # replica up to 7x slower than the other at times (served 126/66 in a CI run, 132/252 of 384 in a probe of
    # this stack). Both gateways must still use both engines.
    assert min(served.values()) >= total / 6, f"an engine was all but left out: {served}"


def test_prometheus_scrapes_every_target(stack: Stack):
    prometheus = stack.prometheus_url()

    def targets_up() -> bool:
        active = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        jobs = [t["labels"]["job"] for t in active]
        # 2 engines, 2 gateways and Prometheus itself, every one scraped successfully.
        return sorted(jobs) == ["engine", "engine", "gateway", "gateway", "prometheus"] and all(
            t["health"] == "up" for t in active
        )

    # Discovery and scrapes run every 15 s (deploy/prometheus/prometheus.yml).
    wait_for(targets_up, 90, "Prometheus to scrape 2 engines, 2 gateways and itself", interval_s=2)

    def series(match: str) -> set[str]:
        names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=5).json()["data"]
        return {name for name in names if name.startswith(match)}

    assert {"alm_gateway_requests_total", "alm_gateway_engine_healthy"} <= series("alm_gateway_")
    assert {"vllm:request_success_total", "vllm:num_requests_waiting"} <= series("vllm:")


def test_scaled_up_engine_receives_traffic_within_30_s(stack: Stack):
    old = set(stack.containers("engine"))
    stack.up(engines=3, gateways=2)
    (new,) = set(stack.containers("engine")) - old
    wait_for(lambda: stack.engine_ready(new), ENGINE_START_TIMEOUT_S, f"the new engine {new}")
    gateway = stack.gateway_urls()[0]

    def new_engine_served() -> bool:
        chat(gateway)
        return stack.engine_requests(new) > 0

    # From the moment it serves /v1/models: re-resolution plus one health round, then least-loaded routing.
    wait_for(new_engine_served, 30, f"traffic to the new engine {new}", interval_s=0.1)


def test_engine_killed_under_load_fails_no_request(stack: Stack):
    gateways = stack.gateway_urls()
    victim = stack.containers("engine")[0]
    total = 64

    def killer_after(done: list[int]) -> None:
        wait_for(lambda: len(done) >= 8, 120, "the first replies under load", interval_s=0.05)
        run(tool("podman"), "kill", victim)

    done: list[int] = []

    def one(i: int) -> str:
        text = chat(gateways[i % len(gateways)])
        done.append(i)
        return text

    with ThreadPoolExecutor(9) as pool:
        kill = pool.submit(killer_after, done)
        results = [pool.submit(one, i) for i in range(total)]
        errors = [f.exception() for f in results]
        kill.result()
    failed = [repr(e) for e in errors if e is not None]
    assert not failed, f"{len(failed)} of {total} requests failed: {failed[:3]}"


def test_down_leaves_nothing_behind(stack: Stack):
    stack.down()
    assert stack.leftovers() == {}
