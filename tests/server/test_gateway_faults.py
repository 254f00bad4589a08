"""Gateway failure paths against fake engines: retries, ejection, timeouts, overload, stream faults, disconnects,
auth, metrics and what is forwarded. (The real engine is exercised in test_e2e_*.py.)"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from server.config import load_settings
from server.ingest.audio.clip import AudioLimits, decode_audio
from tests.support.audio_synth import audio_part, chat_body, encode, tone
from tests.support.fakes import FakeEngine, serve
from tests.support.waiting import wait_until

M = "fake-model"


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_forwards_normalised_audio_and_unknown_fields(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    gw = start_gateway([url])
    part = audio_part("mp3", 1.0, 44_100, 2)
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M, part, top_k=3, ignore_eos=True))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "hello from fake"
    assert resp.headers["x-request-id"]
    sent = fake.bodies[0]
    assert sent["top_k"] == 3 and sent["ignore_eos"] is True and sent["max_tokens"] == 4
    fwd = sent["messages"][0]["content"][0]
    assert fwd["type"] == "input_audio" and fwd["input_audio"]["format"] == "wav"
    samples, rate = sf.read(io.BytesIO(base64.b64decode(fwd["input_audio"]["data"])), dtype="float32")
    expected = decode_audio(base64.b64decode(part["input_audio"]["data"]), AudioLimits.of(load_settings()), "p")
    assert rate == 16_000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, expected.samples)
    assert sent["messages"][0]["content"][1] == {"type": "text", "text": "What do you hear?"}


def test_retries_on_5xx_then_succeeds(start_fake, start_gateway) -> None:
    bad, bad_url = start_fake(mode="status", status=503)
    good, good_url = start_fake()
    gw = start_gateway([bad_url, good_url])
    for _ in range(4):
        assert httpx.post(gw + "/v1/chat/completions", json=chat_body(M)).status_code == 200
    assert len(bad.bodies) >= 1 and good.completed == 4


def test_engine_4xx_is_relayed_not_retried(start_fake, start_gateway) -> None:
    fake, url = start_fake(mode="status", status=400)
    other, other_url = start_fake()
    gw = start_gateway([url, other_url])
    codes = [httpx.post(gw + "/v1/chat/completions", json=chat_body(M)).status_code for _ in range(2)]
    assert 400 in codes and len(fake.bodies) + len(other.bodies) == 2


def test_all_engines_failing_is_502(start_fake, start_gateway) -> None:
    _, a = start_fake(mode="status", status=500)
    _, b = start_fake(mode="status", status=500)
    resp = httpx.post(start_gateway([a, b]) + "/v1/chat/completions", json=chat_body(M))
    assert resp.status_code == 502 and error_of(resp)["code"] == "upstream_error"


def test_dead_engine_is_ejected_and_request_retried(start_fake, start_gateway) -> None:
    good, good_url = start_fake()
    with ExitStack() as doomed:
        dead = FakeEngine()
        dead_url = doomed.enter_context(serve(dead.app()))
        gw = start_gateway([dead_url, good_url], health_interval_s=3600)  # only the initial check
    # dead_url now refuses connections but the pool still believes it healthy
    for _ in range(3):
        assert httpx.post(gw + "/v1/chat/completions", json=chat_body(M)).status_code == 200
    assert good.completed == 3
    metrics = httpx.get(gw + "/metrics").text
    assert 'alm_gateway_upstream_errors_total{kind="connect"} 1.0' in metrics
    assert f'alm_gateway_engine_healthy{{engine="{dead_url[7:]}"}} 0.0' in metrics


def test_no_healthy_engine_is_503_and_not_ready(start_fake, start_gateway) -> None:
    _, url = start_fake(healthy=False)
    gw = start_gateway([url])
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M))
    assert resp.status_code == 503 and error_of(resp)["code"] == "no_healthy_engine"
    assert httpx.get(gw + "/ready").status_code == 503
    assert httpx.get(gw + "/health").status_code == 200


def test_unknown_model_is_404(start_fake, start_gateway) -> None:
    _, url = start_fake()
    resp = httpx.post(start_gateway([url]) + "/v1/chat/completions", json=chat_body("nope"))
    assert resp.status_code == 404
    assert error_of(resp) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_timeout_is_504(start_fake, start_gateway) -> None:
    _, url = start_fake(mode="hang")
    resp = httpx.post(
        start_gateway([url], request_timeout_s=0.5) + "/v1/chat/completions", json=chat_body(M), timeout=30
    )
    assert resp.status_code == 504 and error_of(resp)["code"] == "timeout"


async def test_overload_is_429_with_retry_after(start_fake, start_gateway) -> None:
    fake, url = start_fake(mode="hang")
    gw = start_gateway([url], max_inflight_per_engine=1, max_queue=0, retry_after_s=2, request_timeout_s=60)
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(gw + "/v1/chat/completions", json=chat_body(M)))
        while not fake.bodies:
            await asyncio.sleep(0.02)
        resp = await client.post(gw + "/v1/chat/completions", json=chat_body(M))
        first.cancel()
    assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
    assert error_of(resp)["type"] == "rate_limit_error"


def test_broken_stream_ends_with_error_event(start_fake, start_gateway) -> None:
    _, url = start_fake(mode="break_stream", stream_events=5)
    client = openai.OpenAI(base_url=start_gateway([url]) + "/v1", api_key="x", max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in client.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["t0 ", "t1 "]


def test_client_disconnect_closes_upstream(start_fake, start_gateway) -> None:
    fake, url = start_fake(stream_events=100_000, event_delay_s=0.01)
    gw = start_gateway([url])
    with httpx.stream("POST", gw + "/v1/chat/completions", json=chat_body(M, stream=True)) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
    wait_until(lambda: fake.aborted == 1)
    wait_until(
        lambda: (
            "alm_gateway_engine_in_flight_requests" in (m := httpx.get(gw + "/metrics").text)
            and f'engine="{url[7:]}"}} 0.0' in m
        )
    )


def test_client_disconnect_cancels_non_streamed_request(start_fake, start_gateway) -> None:
    fake, url = start_fake(mode="hang")
    gw = start_gateway([url])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw + "/v1/chat/completions", json=chat_body(M), timeout=httpx.Timeout(60, read=0.5))
    wait_until(lambda: fake.aborted == 1)
    wait_until(
        lambda: 'alm_gateway_requests_total{code="499",route="chat_completions"} 1.0' in httpx.get(gw + "/metrics").text
    )


@pytest.mark.parametrize("keys", [[], ["k1", "k2"]])
def test_auth(start_fake, start_gateway, keys: list[str]) -> None:
    _, url = start_fake()
    gw = start_gateway([url], api_keys=keys)
    for key, ok in [(None, not keys), ("wrong", not keys), ("k2", True)]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M), headers=headers)
        assert resp.status_code == (200 if ok else 401)
        if not ok:
            assert error_of(resp)["code"] == "invalid_api_key"
    assert httpx.get(gw + "/health").status_code == 200
    # With keys, /metrics needs one too (protect_details; tests/server/test_hostile_round2.py).
    assert httpx.get(gw + "/metrics").status_code == (401 if keys else 200)
    assert httpx.get(gw + "/metrics", headers={"authorization": "Bearer k2"}).status_code == 200


def test_metrics_exist_at_zero_and_count(start_fake, start_gateway) -> None:
    _, url = start_fake()
    gw = start_gateway([url])
    before = httpx.get(gw + "/metrics").text
    for name in (
        'alm_gateway_requests_total{code="429",route="chat_completions"} 0.0',
        'alm_gateway_upstream_errors_total{kind="timeout"} 0.0',
        "alm_gateway_queue_depth 0.0",
        f'alm_gateway_engine_healthy{{engine="{url[7:]}"}} 1.0',
    ):
        assert name in before
    httpx.post(gw + "/v1/chat/completions", json=chat_body(M, audio_part()))
    after = httpx.get(gw + "/metrics").text
    assert 'alm_gateway_requests_total{code="200",route="chat_completions"} 1.0' in after
    assert "alm_gateway_input_audio_seconds_count 1.0" in after
    assert "alm_gateway_ingest_duration_seconds_count 1.0" in after


def test_models_lists_healthy_engines(start_fake, start_gateway) -> None:
    _, a = start_fake(model="m1")
    _, b = start_fake(model="m2")
    data = httpx.get(start_gateway([a, b]) + "/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["m1", "m2"]


def test_remote_audio_url(start_fake, start_gateway, stack) -> None:
    from fastapi import FastAPI, Response

    media = FastAPI()
    wav = encode(tone(1.0), 16_000, "wav")
    media.get("/a.wav")(lambda: Response(wav, media_type="audio/wav"))
    media_url = stack.enter_context(serve(media)).replace("127.0.0.1", "localhost") + "/a.wav"
    fake, url = start_fake()
    part = {"type": "audio_url", "audio_url": {"url": media_url}}
    off = httpx.post(start_gateway([url]) + "/v1/chat/completions", json=chat_body(M, part))
    assert off.status_code == 400 and error_of(off)["code"] == "audio_url_not_allowed"
    guarded = start_gateway([url], allow_audio_urls=True, audio_url_domains=["localhost"])
    resp = httpx.post(guarded + "/v1/chat/completions", json=chat_body(M, part))
    assert resp.status_code == 400 and "private" in error_of(resp)["message"]
    other = start_gateway([url], allow_audio_urls=True, audio_url_domains=["example.com"])
    resp = httpx.post(other + "/v1/chat/completions", json=chat_body(M, part))
    assert error_of(resp)["param"] == "messages[0].content[0].audio_url.url"
    trusted = start_gateway([url], allow_audio_urls=True, audio_url_domains=["localhost"], audio_url_allow_private=True)
    assert httpx.post(trusted + "/v1/chat/completions", json=chat_body(M, part)).status_code == 200
    assert json.dumps(fake.bodies[-1]).count('"format": "wav"') == 1


def test_ingest_never_blocks_the_event_loop(start_fake, start_gateway, monkeypatch) -> None:
    """While one request's audio decode is stuck, /health and other requests are still served."""
    import threading

    import server.ingest.prepare

    release, entered = threading.Event(), threading.Event()
    real = server.ingest.prepare.decode_audio

    def stuck_decode(*args, **kwargs):
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(server.ingest.prepare, "decode_audio", stuck_decode)
    _, url = start_fake()
    gw = start_gateway([url])
    big = chat_body(M, audio_part("wav", 5.0))  # > 32 KiB: parsed and decoded in the ingest pool
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, gw + "/v1/chat/completions", json=big, timeout=60)
        assert entered.wait(30)
        assert httpx.get(gw + "/health", timeout=30).status_code == 200
        assert httpx.post(gw + "/v1/chat/completions", json=chat_body(M), timeout=30).status_code == 200
        assert not pending.done()
        release.set()
        assert pending.result().status_code == 200


@pytest.mark.parametrize(
    ("fmt", "status", "expected"),
    [("json", 200, '{"text":"hello from fake"}'), ("text", 200, "hello from fake"), ("srt", 400, None)],
)
def test_transcription_formats(start_fake, start_gateway, fmt: str, status: int, expected: str | None) -> None:
    fake, url = start_fake()
    wav = encode(tone(1.0, 8_000, 2), 8_000, "wav")
    resp = httpx.post(
        start_gateway([url]) + "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": M, "response_format": fmt, "language": "de"},
    )
    assert resp.status_code == status
    if expected is None:
        assert error_of(resp)["param"] == "response_format" and not fake.bodies
        return
    assert resp.text == expected
    sent = fake.bodies[0]
    assert sent["max_tokens"] == 448 and "The language is de." in sent["messages"][0]["content"][1]["text"]
    assert sent["messages"][0]["content"][0]["input_audio"]["format"] == "wav"
