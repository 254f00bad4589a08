"""Overload through the gateway piles up INSIDE the real engine, where the HPA's series sees it.

One extra engine with ``--max-num-seqs 4`` (started by the engine contract, as ``ALM_MAX_NUM_SEQS=4`` would):
the gateway, told the same ``max_num_seqs``, gives it 4 requests to batch plus ``engine_max_waiting`` (8) to
queue, keeps the rest of a burst in its own bounded queue, and answers 429 beyond that. Meanwhile the engine's
``vllm:num_requests_waiting`` (what deploy/k8s/engine-hpa.yaml scales on) stands above the HPA's target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from server.routing.load_reports import read_report
from tests.support.engine import EngineProcess, start_engine

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

MAX_NUM_SEQS, ENGINE_MAX_WAITING, GATEWAY_QUEUE = 4, 8, 4
HPA = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "engine-hpa.yaml"


def hpa_target() -> float:
    """The HPA's per-pod target of the engines' waiting requests."""
    (metric,) = yaml.safe_load(HPA.read_text())["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"  # the adapter's vllm:num_requests_waiting
    return float(metric["pods"]["target"]["averageValue"])


@pytest.fixture(scope="module")
def small_engine(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    engine = start_engine(
        tiny_checkpoint, tmp_path_factory.mktemp("small-engine") / "engine.log", max_num_seqs=MAX_NUM_SEQS
    )
    yield engine
    engine.stop()


async def engine_counts(client: httpx.AsyncClient, engine: EngineProcess) -> tuple[int, int]:
    resp = await client.get(engine.url + "/metrics")
    resp.raise_for_status()

    async def lines():
        for line in resp.content.splitlines(keepends=True):
            yield line

    counts = await read_report(lines(), len(resp.content))
    assert counts is not None, resp.text[:2000]
    return counts


def gauge(text: str, sample: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(sample + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_overload_queues_inside_the_engine_above_the_hpa_target(small_engine, start_gateway) -> None:
    assert hpa_target() < ENGINE_MAX_WAITING  # else the HPA could never see its target exceeded
    gateway = start_gateway(
        [small_engine.url],
        max_num_seqs=MAX_NUM_SEQS,
        engine_max_waiting=ENGINE_MAX_WAITING,
        max_queue=GATEWAY_QUEUE,
        retry_after_s=2,
        request_timeout_s=300,
    )
    body = {
        "model": small_engine.model,
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 7000,
        "ignore_eos": True,
    }  # far longer than the test: nothing finishes
    admitted = MAX_NUM_SEQS + ENGINE_MAX_WAITING + GATEWAY_QUEUE
    async with httpx.AsyncClient(timeout=300) as client:
        burst = [asyncio.create_task(client.post(gateway + "/v1/chat/completions", json=body)) for _ in range(admitted)]
        try:
            peak = 0
            for _ in range(3000):
                running, waiting = await engine_counts(client, small_engine)
                peak = max(peak, running + waiting)
                scraped = (await client.get(gateway + "/metrics")).text
                if waiting >= ENGINE_MAX_WAITING and gauge(scraped, "alm_gateway_queue_depth") == GATEWAY_QUEUE:
                    break
                await asyncio.sleep(0.02)
            assert not any(task.done() for task in burst), [t.result().text for t in burst if t.done()]
            # The engine batches what it can and holds the next 8: the HPA's series is above its target.
            assert (running, waiting) == (MAX_NUM_SEQS, ENGINE_MAX_WAITING)
            assert waiting > hpa_target()
            assert peak <= MAX_NUM_SEQS + ENGINE_MAX_WAITING  # never more than its capacity
            # The engine contract turns on vLLM's /load: what the gateway routes by counts the same 12 requests.
            assert (await client.get(small_engine.url + "/load")).json() == {"server_load": 12}
            # Beyond the engine's capacity and the gateway's queue: backpressure.
            refused = await client.post(gateway + "/v1/chat/completions", json=body)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
            error = refused.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "overloaded", None)
            # The gateway's own view of the engine, read in its health round, says the same.
            name = small_engine.url.removeprefix("http://")
            for _ in range(200):
                scraped = (await client.get(gateway + "/metrics")).text
                if gauge(scraped, f'alm_gateway_engine_waiting_requests{{engine="{name}"}}') == ENGINE_MAX_WAITING:
                    break
                await asyncio.sleep(0.05)
            assert gauge(scraped, f'alm_gateway_engine_running_requests{{engine="{name}"}}') == MAX_NUM_SEQS
            assert gauge(scraped, f'alm_gateway_engine_waiting_requests{{engine="{name}"}}') == ENGINE_MAX_WAITING
            assert gauge(scraped, f'alm_gateway_engine_in_flight_requests{{engine="{name}"}}') == 12
        finally:
            for task in burst:  # the client leaves: the gateway aborts the engine's requests
                task.cancel()
            await asyncio.gather(*burst, return_exceptions=True)
        for _ in range(500):  # the aborts reach the engine: it is idle again
            if await engine_counts(client, small_engine) == (0, 0):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the engine's requests were not aborted")
