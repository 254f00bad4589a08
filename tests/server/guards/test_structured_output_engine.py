"""The worst structured-output specs the gateway allows, on a real vLLM engine (the session engine): each compiles
and answers 200, and a plain request sent beside them all is not delayed by more than a second.

The tiny checkpoint's vocabulary is small, so compiling is quick here; bench/structured_compile.py times the same
specs on a 151k-token vocabulary."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.api.app import create_app
from server.config import load_settings
from server.guards.structured import StructuredLimits
from tests.support.corpus.structured import worst_allowed
from tests.support.fakes import serve

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

MAX_DELAY_S = 1.0


@pytest.fixture(scope="module")
def gateway(engine_server) -> Iterator[str]:
    with serve(create_app(load_settings(engine_urls=[engine_server.url], health_interval_s=0.5))) as url:
        yield url


def chat(url: str, model: str, max_tokens: int, **extra: object) -> tuple[float, httpx.Response]:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Answer."}], **extra}
    start = time.perf_counter()
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    return time.perf_counter() - start, reply


def test_plain_requests_beside_the_worst_allowed_specs(engine_server, gateway) -> None:
    model = engine_server.model
    specs = worst_allowed(StructuredLimits.of(load_settings()))
    chat(gateway, model, 1)  # warm-up
    alone = statistics.median(chat(gateway, model, 4)[0] for _ in range(5))
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(chat, gateway, model, 16, **fragment) for name, fragment in specs.items()}
        beside = []
        while not all(f.done() for f in futures.values()) or not beside:
            beside.append(chat(gateway, model, 4)[0])
        for name, future in futures.items():
            _, reply = future.result()
            assert reply.status_code == 200, (name, reply.text[:500])
    assert max(beside) - alone < MAX_DELAY_S, (alone, beside)
