"""Stream failover against two real engines: the engine serving a stream is killed (SIGKILL, whole process tree)
mid-stream; the openai SDK client sees one complete stream (one id, no error), resumed on the survivor from the
text already sent, and the greedy joined text is compared with an uninterrupted run on the survivor.

Equality of the whole joined text is not asserted: the resumed prompt re-tokenises the text sent, which may
differ from the tokens generated, and the continuation may then differ (bench/routing/failover.py measures how
often; docs/routing.md reports it). What must hold: the text before the resume is the uninterrupted run's
prefix, and the token count is the request's.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from server.api.app import create_app
from server.config import load_settings
from tests.server.relay.test_e2e_failover import running
from tests.support.audio_synth import audio_part, chat_body
from tests.support.engine import kill_tree
from tests.support.fakes import serve
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

TOKENS = 300
GREEDY = dict(max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True})


def test_a_stream_survives_its_engine_being_killed(engine_server, doomed_engine) -> None:
    model = engine_server.model
    messages = chat_body(model, audio_part(seconds=1.0))["messages"]
    direct = openai.OpenAI(base_url=engine_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    reference = "".join(
        c.choices[0].delta.content or ""
        for c in direct.chat.completions.create(model=model, messages=messages, stream=True, **GREEDY)
        if c.choices
    )
    settings = load_settings(
        engine_urls=[doomed_engine.url, engine_server.url], routing="least-request", health_interval_s=0.5
    )
    with serve(create_app(settings)) as gw:
        for url in (doomed_engine.url, engine_server.url):
            wait_until(lambda url=url: f'engine_healthy{{engine="{url[7:]}"}} 1.0' in httpx.get(gw + "/metrics").text)
        sdk = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=300)
        stream = sdk.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            **GREEDY,
        )
        chunks, before = [], ""
        for chunk in stream:  # a fresh gateway's first stream goes to the first engine: the doomed one
            chunks.append(chunk)
            before += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if len(chunks) == 6:
                break
        assert running(doomed_engine.url) == 1
        kill_tree(doomed_engine.proc)
        chunks += list(stream)  # raises on an error event
        metrics = httpx.get(gw + "/metrics").text
    assert 'alm_gateway_stream_resumes_total{outcome="resumed"} 1.0' in metrics
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    choices = [c.choices[0] for c in chunks if c.choices]
    assert [ch.delta.role for ch in choices].count("assistant") == 1 and choices[0].delta.role == "assistant"
    assert [ch.finish_reason for ch in choices if ch.finish_reason] == ["length"] and choices[-1].finish_reason
    assert chunks[-1].usage.completion_tokens == TOKENS  # counted exactly across both engines
    joined = "".join(ch.delta.content or "" for ch in choices)
    common = next((i for i, (x, y) in enumerate(zip(joined, reference, strict=False)) if x != y), len(reference))
    assert joined.startswith(before) and common >= len(before)
    print(f"joined == uninterrupted: {joined == reference} (common prefix {common} of {len(reference)} chars)")
