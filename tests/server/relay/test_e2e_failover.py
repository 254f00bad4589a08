"""Two real engine replicas behind one gateway; one is killed (SIGKILL, whole process tree) under load.

Non-streamed requests see 0 failures (in-flight ones are retried on the survivor: nothing had reached the
client yet), a stream that had started on the dead engine ends with an SSE error event when stream failover is
off, and new requests succeed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server.api.app import create_app
from server.config import load_settings
from tests.support.audio_synth import audio_part, chat_body
from tests.support.engine import kill_tree
from tests.support.fakes import serve

LONG = dict(max_tokens=7000, extra_body={"ignore_eos": True})


def running(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running")
    )


def test_replica_killed_under_load(engine_server, doomed_engine) -> None:
    # Stream failover off: this test is of the error event (test_failover_engine.py resumes streams); least-request:
    # the same clip would send both streams to one engine under affinity.
    settings = load_settings(
        engine_urls=[engine_server.url, doomed_engine.url],
        health_interval_s=0.5,
        stream_failover=False,
        routing="least-request",
    )
    model = engine_server.model
    with serve(create_app(settings)) as gw:
        sdk = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=120)
        msgs = chat_body(model, audio_part())["messages"]
        # Least-outstanding with a fresh gateway: the first stream lands on engine_server, the second on doomed.
        streams = [sdk.chat.completions.create(model=model, messages=msgs, stream=True, **LONG) for _ in range(2)]
        chunks = [iter(s) for s in streams]
        for it in chunks:
            next(it)
        assert running(engine_server.url) == 1 and running(doomed_engine.url) == 1

        done = threading.Semaphore(0)

        def one(i: int) -> str:
            r = sdk.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
            done.release()
            return r.choices[0].finish_reason

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(48)]
            for _ in range(8):
                done.acquire()
            kill_tree(doomed_engine.proc)
            outcomes = [f.exception() or f.result() for f in futures]
        assert [o for o in outcomes if isinstance(o, Exception)] == []
        assert outcomes == ["length"] * 48

        with pytest.raises(openai.APIError, match="interrupted"):
            for _ in chunks[1]:
                pass
        streams[0].close()

        for _ in range(4):
            assert sdk.chat.completions.create(model=model, messages=msgs, max_tokens=2).usage.completion_tokens == 2
        metrics = httpx.get(gw + "/metrics").text
        assert f'alm_gateway_engine_healthy{{engine="{doomed_engine.url[7:]}"}} 0.0' in metrics
        assert 'alm_gateway_upstream_errors_total{kind="stream_interrupted"} 1.0' in metrics
        assert httpx.get(gw + "/ready").status_code == 200
