"""A field that breaks engines (issue 17): ``truncate_prompt_tokens`` is refused before any engine sees it, and
vLLM's retryable 500 (its multimodal cache drift) is sent again to the engine that asked for it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server.api.app import create_app
from server.config import load_settings
from server.relay.engine_errors import is_retryable
from tests.support.audio_synth import audio_part, chat_body
from tests.support.fakes import serve
from tests.support.waiting import wait_until

M = "fake-model"
CLIP = audio_part("wav", 2.0)
DRIFT = {"error": {"message": "Internal server error", "type": "InternalServerError", "param": None, "code": 500}}
"""vLLM 0.32's answer to a request that ended with finish_reason "error" (GenerationError): its cache drift."""
ASSERTION = {
    "error": {
        "message": "Failed to apply prompt replacement",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}


def post(gw: str, body: dict) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body, timeout=30)


@pytest.mark.parametrize("tokens", [1, 10, 20, -1, 0, None])
def test_truncate_prompt_tokens_is_refused_and_the_clip_served_next(start_fake, start_gateway, tokens) -> None:
    fake, url = start_fake()
    gw = start_gateway([url])
    resp = post(gw, chat_body(M, CLIP, truncate_prompt_tokens=tokens))
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "message": "'truncate_prompt_tokens' (prompt truncation by the engine) is not accepted by this gateway",
            "type": "invalid_request_error",
            "param": "truncate_prompt_tokens",
            "code": "unsupported_parameter",
        }
    }
    assert fake.bodies == []
    assert post(gw, chat_body(M, CLIP)).status_code == 200


# ------------------------------------------------------------------ vLLM's retryable 500


def scripted_engine(answers: list[tuple[int, dict]], seen: list[int]) -> FastAPI:
    """An engine that answers its chat requests with ``answers`` in turn (then 200s); ``seen`` gets one entry each."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": M, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        seen.append(1)
        status, body = answers[len(seen) - 1] if len(seen) <= len(answers) else (200, {"choices": []})
        return JSONResponse(body, status_code=status)

    return app


def healthy(gw: str, url: str) -> bool:
    return (
        f'alm_gateway_engine_healthy{{engine="{url.removeprefix("http://")}"}} 1.0' in httpx.get(gw + "/metrics").text
    )


@pytest.mark.parametrize(
    ("answers", "first", "second"),
    [
        ([(500, DRIFT)], 2, 0),  # sent again to the engine that asked: its API server now sends the clip's data
        ([(500, DRIFT), (500, DRIFT)], 2, 1),  # once only: then another engine
        ([(500, ASSERTION)], 1, 1),  # any other 500: another engine, as before
        ([(503, {"error": {"message": "KV load failed", "type": "ServiceUnavailableError", "code": 503}})], 2, 0),
    ],
    ids=["drift", "drift_twice", "other_500", "retryable_503"],
)
def test_vllms_retryable_error_is_retried_on_the_same_engine(
    start_gateway, stack, answers: list, first: int, second: int
) -> None:
    seen_a: list[int] = []
    seen_b: list[int] = []
    a = stack.enter_context(serve(scripted_engine(answers, seen_a)))
    b = stack.enter_context(serve(scripted_engine([], seen_b)))
    gw = start_gateway([a, b])
    wait_until(lambda: healthy(gw, a) and healthy(gw, b))
    resp = post(gw, chat_body(M))  # no clip, no affinity: a fresh pool's first pick is the first engine
    assert resp.status_code == 200, resp.text
    assert (len(seen_a), len(seen_b)) == (first, second)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, DRIFT, True),
        (500, ASSERTION, False),
        (500, {"error": {"message": "Internal server error", "type": "BadRequestError"}}, False),
        (502, DRIFT, False),
        (503, {"error": {"message": "x", "type": "ServiceUnavailableError"}}, True),
        (503, {"error": {"message": "x", "type": "Service Unavailable"}}, False),  # vLLM's admission refusal
        (500, "not json", False),
        (500, ["error"], False),
    ],
)
def test_which_answers_are_retryable(status: int, body: object, expected: bool) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert is_retryable(status, raw) is expected


# ------------------------------------------------------------------ the real engine


def test_real_engine_serves_a_clip_right_after_a_refused_truncation(engine_server) -> None:
    """The review's sequence on vLLM 0.32: ``truncate_prompt_tokens`` with a clip (1–10: an assertion, 500; 20:
    a 400 after the clip was cached), then the same clip → the cache-drift 500. The gateway refuses the first,
    so the engine never caches the clip for a request it drops."""
    settings = load_settings(engine_urls=[engine_server.url], health_interval_s=0.5)
    with serve(create_app(settings)) as gw:
        wait_until(lambda: httpx.get(gw + "/v1/models").json()["data"] != [], timeout_s=60)
        client = openai.OpenAI(base_url=gw + "/v1", api_key="unused", max_retries=0, timeout=120)
        messages = chat_body(engine_server.model, audio_part("wav", 2.0, channels=1))["messages"]
        for tokens in (5, 20):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(
                    model=engine_server.model,
                    messages=messages,
                    max_tokens=2,
                    extra_body={"truncate_prompt_tokens": tokens},
                )
            assert info.value.status_code == 400 and info.value.body["param"] == "truncate_prompt_tokens"
        r = client.chat.completions.create(model=engine_server.model, messages=messages, max_tokens=2, temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_real_engine_cache_drift_is_healed_by_a_retry_on_the_same_engine(engine_server) -> None:
    """The drift itself, caused behind the gateway's back (straight to the engine), then met through the gateway:
    vLLM answers its retryable 500 and the gateway's second try on the same engine is served."""
    part = audio_part("wav", 3.0)  # 16 kHz 16-bit mono: forwarded with the same samples, so the same media hash
    direct = httpx.post(
        engine_server.url + "/v1/chat/completions",
        json=chat_body(engine_server.model, part, max_tokens=2, truncate_prompt_tokens=20),
        timeout=120,
    )
    assert direct.status_code == 400, direct.text  # refused after its processor cached the clip
    settings = load_settings(engine_urls=[engine_server.url], health_interval_s=0.5)
    with serve(create_app(settings)) as gw:
        wait_until(lambda: httpx.get(gw + "/v1/models").json()["data"] != [], timeout_s=60)
        resp = post(gw, chat_body(engine_server.model, part, max_tokens=2))
        assert resp.status_code == 200, resp.text
        metrics = httpx.get(gw + "/metrics").text
    assert 'alm_gateway_upstream_errors_total{kind="status_5xx"} 1.0' in metrics
    assert "cache drift" in engine_server.log()
