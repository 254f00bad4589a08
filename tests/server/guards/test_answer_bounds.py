"""Answers without a bound (issue 17): how much output a request may ask for is refused before any audio is decoded,
a request's work counts its choices, and an engine's answer is read only up to ``max_answer_bytes``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from server.config import load_settings
from server.ingest.prepare import finish_chat, parse_chat
from server.routing.policies import request_tokens
from server.work import EngineWork
from tests.support.audio_synth import audio_part, chat_body
from tests.support.fakes import serve
from tests.support.waiting import wait_until

M = "fake-model"
BROKEN_AUDIO = {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}  # "not audio"
"""A clip that fails to decode: a refusal that names another field shows the field was judged before decoding."""
LOGPROBS = {"logprobs": True, "top_logprobs": 20}


def post(gw: str, body: dict) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body, timeout=30)


def refused(resp: httpx.Response, param: str, code: str, status: int = 400) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error == {"message": error["message"], "type": "invalid_request_error", "param": param, "code": code}
    return error["message"]


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        # the review's 90 MB answer, and the request that held an engine 62 s as one slot
        ({"n": 256, **LOGPROBS, "max_tokens": 256, "ignore_eos": True}, "n", "integer_above_max_value"),
        ({"n": 16384}, "n", "integer_above_max_value"),
        ({"n": 0}, "n", "integer_below_min_value"),
        ({"n": "256"}, "n", "invalid_type"),  # vLLM's pydantic would read 256
        ({"n": 256.0}, "n", "integer_above_max_value"),  # an integral JSON number is an integer, as to vLLM
        ({"n": 2.5}, "n", "invalid_type"),
        ({"n": True}, "n", "invalid_type"),
        ({"best_of": 64}, "best_of", "integer_above_max_value"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "integer_below_min_value"),  # -1: whole vocabulary
        ({"logprobs": True, "top_logprobs": "20"}, "top_logprobs", "invalid_type"),
        ({"logprobs": "yes", "top_logprobs": 20}, "logprobs", "invalid_type"),
        ({"logprobs": True, "logprob_token_ids": list(range(21))}, "logprob_token_ids", "array_above_max_length"),
        ({"prompt_logprobs": 20}, "prompt_logprobs", "unsupported_parameter"),
        ({"prompt_logprobs": -1}, "prompt_logprobs", "unsupported_parameter"),
        ({"echo": True, **LOGPROBS}, "echo", "unsupported_parameter"),
        ({"echo": "true"}, "echo", "invalid_type"),
        ({"n": 16, "max_tokens": 4097}, "max_tokens", "too_many_output_tokens"),
        (
            {"n": 16, "max_tokens": None, "max_completion_tokens": 8192},
            "max_completion_tokens",
            "too_many_output_tokens",
        ),
        ({"max_tokens": "100000"}, "max_tokens", "invalid_type"),  # would also slip past the context check
        ({"n": 2, "max_tokens": 32769}, "max_tokens", "too_many_output_tokens"),
        ({"max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ],
)
def test_output_fields_are_bounded_before_audio_is_decoded(
    start_fake, start_gateway, fields: dict, param: str, code: str
) -> None:
    fake, url = start_fake()
    gw = start_gateway([url])
    refused(post(gw, chat_body(M, BROKEN_AUDIO, **fields)), param, code)
    assert fake.bodies == []


def test_the_limits_are_settings(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    gw = start_gateway([url], max_n=2, max_top_logprobs=5, max_total_output_tokens=100)
    message = refused(post(gw, chat_body(M, n=3)), "n", "integer_above_max_value")
    assert message == "Invalid 'n': integer above maximum value. Expected a value <= 2, but got 3 instead."
    refused(post(gw, chat_body(M, logprobs=True, top_logprobs=6)), "top_logprobs", "integer_above_max_value")
    message = refused(post(gw, chat_body(M, n=2, max_tokens=51)), "max_tokens", "too_many_output_tokens")
    assert "n × max_tokens = 102 tokens; the limit is 100" in message
    # without a limit a choice counts as the gateway's routing default (128): 2 × 128 > 100
    refused(post(gw, chat_body(M, n=2, max_tokens=None)), "n", "too_many_output_tokens")
    assert post(gw, chat_body(M, n=2, max_tokens=50, logprobs=True, top_logprobs=5)).status_code == 200
    # one choice is bounded by the model's context (the context check), not by the total
    assert post(gw, chat_body(M, max_tokens=1000)).status_code == 200
    assert len(fake.bodies) == 2


def test_the_defaults_admit_what_openai_admits(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    gw = start_gateway([url])
    body = chat_body(M, audio_part(), n=16, max_tokens=4096, **LOGPROBS)  # 16 × 4096 = the default 65536
    assert post(gw, body).status_code == 200
    forwarded = fake.bodies[0]
    assert (forwarded["n"], forwarded["top_logprobs"], forwarded["max_tokens"]) == (16, 20, 4096)


def test_integral_json_numbers_are_integers(start_fake, start_gateway) -> None:
    """``4000.0`` and ``4e3`` are what some clients' JSON encoders write for 4000: served, sent on as 4000."""
    fake, url = start_fake()
    gw = start_gateway([url])
    raw = json.dumps(chat_body(M, max_tokens=0)).replace('"max_tokens": 0', '"max_tokens": 4e3, "n": 2.0')
    resp = httpx.post(gw + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert (fake.bodies[0]["max_tokens"], fake.bodies[0]["n"]) == (4000, 2)
    assert type(fake.bodies[0]["max_tokens"]) is int


@pytest.mark.parametrize(
    ("fields", "choices", "decode"), [({"n": 4}, 4, 4 * 4), ({"n": 3, "max_tokens": None}, 3, 3 * 128)]
)
def test_a_requests_work_counts_every_choice(fields: dict, choices: int, decode: int) -> None:
    settings = load_settings(engine_urls=["http://e:1"])
    job = parse_chat(httpx.Request("POST", "/", json=chat_body(M, audio_part(), **fields)).read(), settings)
    finish_chat(job, settings)
    assert job.work.choices == choices
    assert request_tokens(job.work, 128) == job.work.prefill_tokens + decode
    work = EngineWork(128)
    work.add(job.work)
    assert work.decode == decode


# ------------------------------------------------------------------ the engine's answer, read with a bound

LIMIT = 64 * 1024


def big_answer_engine(size: int | None, seen: list[str], chunked: bool = False) -> FastAPI:
    """An engine whose every answer is ``size`` bytes of JSON; ``chunked``: sent in pieces without a length;
    ``size`` None: chunked and endless. Records each request, and ``aborted`` when the gateway hangs up."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": M, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        seen.append("request")
        if size is not None and not chunked:
            return Response(b'{"x":"' + b"a" * size + b'"}', media_type="application/json")

        async def pieces() -> AsyncIterator[bytes]:
            left = size
            try:
                yield b'{"x":"'
                while left is None or left > 0:
                    piece = 8192 if left is None else min(left, 8192)
                    yield b"a" * piece
                    left = None if left is None else left - piece
                    await asyncio.sleep(0.001)
                yield b'"}'
            except BaseException:
                seen.append("aborted")
                raise

        return StreamingResponse(pieces(), media_type="application/json")

    return app


def healthy(gw: str, url: str) -> bool:
    return (
        f'alm_gateway_engine_healthy{{engine="{url.removeprefix("http://")}"}} 1.0' in httpx.get(gw + "/metrics").text
    )


@pytest.mark.parametrize(("size", "chunked"), [(2 * LIMIT, False), (2 * LIMIT, True), (None, True)])
def test_an_answer_over_the_bound_is_a_client_error_and_blames_no_engine(
    start_fake, start_gateway, stack, size: int | None, chunked: bool
) -> None:
    seen: list[str] = []
    big_url = stack.enter_context(serve(big_answer_engine(size, seen, chunked)))
    other, other_url = start_fake()
    gw = start_gateway([big_url, other_url], max_answer_bytes=LIMIT)
    wait_until(lambda: healthy(gw, big_url) and healthy(gw, other_url))
    resp = post(gw, chat_body(M, n=16, max_tokens=4096))  # a fresh pool's first pick: the first engine
    message = refused(resp, None, "answer_too_large")  # type: ignore[arg-type]  # no one field to blame
    assert f"({LIMIT} bytes)" in message
    assert seen[0] == "request" and other.bodies == []  # not retried on another engine
    if size is None:
        wait_until(lambda: "aborted" in seen)  # its connection closed: vLLM aborts the request
    assert healthy(gw, big_url)  # neither ejected nor suspect
    assert post(gw, chat_body(M)).status_code == 200  # the other engine, least loaded now, serves the next
    assert healthy(gw, big_url)


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_within_the_bound_is_relayed_whole(start_gateway, stack, chunked: bool) -> None:
    seen: list[str] = []
    url = stack.enter_context(serve(big_answer_engine(LIMIT - 8, seen, chunked)))
    gw = start_gateway([url], max_answer_bytes=LIMIT)
    wait_until(lambda: healthy(gw, url))
    resp = post(gw, chat_body(M))
    assert resp.status_code == 200 and len(resp.content) == LIMIT
    assert resp.json()["x"] == "a" * (LIMIT - 8)
