"""What of an engine's non-2xx answer reaches the client (5xx: nothing; 4xx: OpenAI's shape; 429: another engine,
then a 429 with Retry-After), and the ejection policy after a failed request (never strand a model)."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import openai
import pytest

from server.relay.upstream import openai_error_body
from tests.support.audio_synth import chat_body, encode, tone
from tests.support.fakes import FakeEngine, serve
from tests.support.waiting import wait_until

M = "fake-model"
LEAKY = json.dumps(
    {
        "error": {
            "message": 'Traceback (most recent call last): File "/srv/vllm/secret.py"',
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
).encode()
UPSTREAM_ERROR = {
    "error": {
        "message": "no engine could complete the request",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
}


def call(gw: str, route: str, stream: bool = False) -> httpx.Response:
    if route == "transcriptions":
        wav = encode(tone(1.0), 16_000, "wav")
        return httpx.post(gw + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": M})
    return httpx.post(gw + "/v1/chat/completions", json=chat_body(M, stream=stream))


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series}")


# ------------------------------------------------------------------ 5xx: replaced, retried


@pytest.mark.parametrize("route", ["chat", "chat_stream", "transcriptions"])
@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 505, 507, 599])
def test_engine_5xx_body_never_reaches_the_client(start_fake, start_gateway, status: int, route: str) -> None:
    fake, url = start_fake(mode="status", status=status, error_body=LEAKY)
    resp = call(start_gateway([url]), route.removesuffix("_stream"), stream=route == "chat_stream")
    assert resp.status_code == 502 and resp.json() == UPSTREAM_ERROR
    assert b"secret" not in resp.content and len(fake.bodies) == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [501, 505, 401, 403])  # 401/403: the engine's key is not the client's business
def test_engine_failure_is_retried_on_another_engine(start_fake, start_gateway, status: int, stream: bool) -> None:
    bad, bad_url = start_fake(mode="status", status=status, error_body=LEAKY)
    good, good_url = start_fake()
    gw = start_gateway([bad_url, good_url])
    resp = call(gw, "chat", stream=stream)  # the first pick of a fresh pool is the first engine
    assert resp.status_code == 200 and b"secret" not in resp.content
    assert len(bad.bodies) == 1 and len(good.bodies) == 1
    assert metric(gw, "alm_gateway_retries_total") == 1


# ------------------------------------------------------------------ 4xx: relayed in OpenAI's shape


def _err(message: str, param: str | None = None, code: str = "invalid_request") -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


VLLM_400 = {
    "error": {
        "message": "max_tokens is too large",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
        "trace": "x",
    }
}
CASES = [
    (400, json.dumps(VLLM_400).encode(), _err("max_tokens is too large", "max_tokens")),
    (
        400,
        json.dumps(
            {"object": "error", "message": "old vLLM", "type": "BadRequestError", "param": None, "code": 400}
        ).encode(),
        _err("old vLLM"),
    ),
    (
        404,
        json.dumps({"error": {"message": "no such model", "code": "model_not_found"}}).encode(),
        _err("no such model", code="model_not_found"),
    ),
    (400, b"<html><body>nginx says no</body></html>", _err("the engine rejected the request (HTTP 400)")),
    (422, b"[" * 100_000, _err("the engine rejected the request (HTTP 422)")),  # too deep for json
    (413, json.dumps({"error": "a string", "param": 7}).encode(), _err("the engine rejected the request (HTTP 413)")),
    (
        400,
        json.dumps({"error": {"message": 5, "type": None, "param": ["x"], "code": {}}}).encode(),
        _err("the engine rejected the request (HTTP 400)"),
    ),
]


@pytest.mark.parametrize("route", ["chat", "chat_stream", "transcriptions"])
@pytest.mark.parametrize(("status", "body", "expected"), CASES)
def test_engine_4xx_is_relayed_in_openai_shape(
    start_fake, start_gateway, status: int, body: bytes, expected: dict, route: str
) -> None:
    fake, url = start_fake(mode="status", status=status, error_body=body)
    other, other_url = start_fake()
    gw = start_gateway([url, other_url], routing="least-request")  # the first engine first, audio or not
    resp = call(gw, route.removesuffix("_stream"), stream=route == "chat_stream")
    assert resp.status_code == status and resp.headers["content-type"] == "application/json"
    assert resp.json() == expected
    assert len(fake.bodies) == 1 and other.bodies == []  # a client error is not retried


def test_openai_error_body_bounds_what_it_copies() -> None:
    body = json.loads(
        openai_error_body(
            400, json.dumps({"error": {"message": "m" * 10_000, "param": "p" * 500, "code": "c" * 500}}).encode()
        )
    )
    assert [len(body["error"][k]) for k in ("message", "param", "code")] == [2000, 200, 100]


def test_the_sdk_sees_an_engine_4xx_as_bad_request(start_fake, start_gateway) -> None:
    _, url = start_fake(mode="status", status=400, error_body=json.dumps(VLLM_400).encode())
    sdk = openai.OpenAI(base_url=start_gateway([url]) + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_request" and info.value.param == "max_tokens"


# ------------------------------------------------------------------ 429: another engine, else 429


@pytest.mark.parametrize("stream", [False, True])
def test_engine_429_is_retried_on_a_healthy_engine(start_fake, start_gateway, stream: bool) -> None:
    busy, busy_url = start_fake(mode="status", status=429, headers={"retry-after": "7"})
    good, good_url = start_fake()
    gw = start_gateway([busy_url, good_url])
    resp = call(gw, "chat", stream=stream)
    assert resp.status_code == 200 and len(busy.bodies) == 1 and len(good.bodies) == 1
    assert metric(gw, 'alm_gateway_upstream_errors_total{kind="status_429"}') == 1
    assert metric(gw, f'alm_gateway_engine_healthy{{engine="{busy_url[7:]}"}}') == 1  # busy is not broken


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ([{"retry-after": "7"}, {"retry-after": "3"}], "3"),  # the soonest any engine expects to have room
        ([{}, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}], "5"),  # none usable: the gateway's own
        ([{"retry-after": "99999999"}], "3600"),  # bounded
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_every_engine_429_is_a_429_with_retry_after(
    start_fake, start_gateway, stream: bool, headers: list, retry_after: str
) -> None:
    urls = [start_fake(mode="status", status=429, headers=h)[1] for h in headers]
    resp = call(start_gateway(urls, retry_after_s=5), "chat", stream=stream)
    assert resp.status_code == 429 and resp.headers["retry-after"] == retry_after
    assert resp.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "rate_limit_error",
        "param": None,
        "code": "overloaded",
    }


def test_a_mix_of_busy_and_failing_engines_is_a_429(start_fake, start_gateway) -> None:
    _, busy = start_fake(mode="status", status=429)
    _, failing = start_fake(mode="status", status=500)
    resp = call(start_gateway([failing, busy], retry_after_s=2), "chat")
    assert resp.status_code == 429 and resp.headers["retry-after"] == "2"


# ------------------------------------------------------------------ ejection policy


def test_a_broken_stream_does_not_eject_the_only_engine(start_fake, start_gateway, caplog) -> None:
    fake, url = start_fake(mode="break_stream", stream_events=5)
    gw = start_gateway([url], health_interval_s=3600)  # only the start-up checks (2), and probes
    wait_until(lambda: fake.health_checks == 2)
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="interrupted"):
        for _ in sdk.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    wait_until(lambda: fake.health_checks == 3)  # probed at once, and the probe passed
    assert "ejecting engine" not in caplog.text
    fake.mode = "ok"
    assert httpx.post(gw + "/v1/chat/completions", json=chat_body(M)).status_code == 200
    assert httpx.get(gw + "/ready").status_code == 200


def test_the_only_engine_is_ejected_once_its_probe_fails(start_fake, start_gateway) -> None:
    fake, url = start_fake(mode="break_stream", stream_events=5)
    gw = start_gateway([url], health_interval_s=3600)
    wait_until(lambda: fake.health_checks == 2)
    fake.healthy = False  # after the start-up check: only the probe can see it
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M, stream=True))
    assert resp.status_code == 200 and "interrupted" in resp.text
    wait_until(lambda: metric(gw, f'alm_gateway_engine_healthy{{engine="{url[7:]}"}}') == 0)
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M))
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_healthy_engine"


def test_a_dead_only_engine_is_ejected_by_its_probe(start_gateway) -> None:
    with ExitStack() as doomed:
        dead = FakeEngine()
        url = doomed.enter_context(serve(dead.app()))
        gw = start_gateway([url], health_interval_s=3600)
    assert call(gw, "chat").status_code == 502  # connection refused, no other engine to try
    wait_until(lambda: call(gw, "chat").status_code == 503)
    assert metric(gw, 'alm_gateway_upstream_errors_total{kind="connect"}') >= 1


def test_a_broken_stream_ejects_the_engine_when_another_serves_the_model(start_fake, start_gateway) -> None:
    flaky, flaky_url = start_fake(mode="break_stream", stream_events=5)
    good, good_url = start_fake()
    gw = start_gateway([flaky_url, good_url], health_interval_s=3600)
    wait_until(lambda: flaky.health_checks == 2)
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M, stream=True))  # first pick: flaky
    assert "interrupted" in resp.text and len(flaky.bodies) == 1
    assert metric(gw, f'alm_gateway_engine_healthy{{engine="{flaky_url[7:]}"}}') == 0
    for _ in range(3):
        assert call(gw, "chat").status_code == 200
    assert len(flaky.bodies) == 1 and good.completed == 3 and flaky.health_checks == 2  # no probe: not needed
