"""End to end: the openai SDK → gateway → the real vLLM engine serving the tiny MiDashengLM checkpoint."""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import openai
import pytest

from server.api.app import create_app
from server.config import load_settings
from tests.support.audio_synth import audio_part, chat_body, encode, tone
from tests.support.fakes import serve
from tests.support.waiting import wait_until

LIMITS = dict(max_audio_bytes=400_000, max_audio_seconds=20.0, max_clips_per_request=2)


@pytest.fixture(scope="module")
def gateway(engine_server) -> str:
    settings = load_settings(
        engine_urls=[engine_server.url], health_interval_s=0.5, transcription_max_tokens=8, **LIMITS
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


def messages(*parts: dict) -> list[dict]:
    return chat_body("m", *parts)["messages"]


def test_models(client: openai.OpenAI, engine_server) -> None:
    assert [m.id for m in client.models.list()] == [engine_server.model]


def test_chat_with_audio(client: openai.OpenAI, engine_server) -> None:
    r = client.chat.completions.create(
        model=engine_server.model, messages=messages(audio_part("wav", 2.0)), max_tokens=5, temperature=0
    )
    assert r.choices[0].message.content and r.usage.completion_tokens == 5
    # 2 s at 16 kHz → ((32000 // 160) + 1) // 4 // 5 = 10 audio tokens on top of the text prompt
    text_only = client.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1)
    assert r.usage.prompt_tokens - text_only.usage.prompt_tokens >= 10


def test_two_clips(client: openai.OpenAI, engine_server) -> None:
    r = client.chat.completions.create(
        model=engine_server.model,
        max_tokens=2,
        messages=messages(audio_part("flac", 1.0), audio_part("mp3", 1.5, 48_000)),
    )
    assert r.choices[0].finish_reason == "length"


def test_stream_with_usage(client: openai.OpenAI, engine_server) -> None:
    stream = client.chat.completions.create(
        model=engine_server.model,
        messages=messages(audio_part("ogg")),
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(
        model=engine_server.model, messages=messages(audio_part("ogg")), max_tokens=6, temperature=0
    )
    assert text == plain.choices[0].message.content  # greedy: streamed == non-streamed


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_formats_and_rates(client: openai.OpenAI, engine_server, fmt: str, rate: int, channels: int) -> None:
    r = client.chat.completions.create(
        model=engine_server.model, max_tokens=1, messages=messages(audio_part(fmt, 1.0, rate, channels))
    )
    assert r.usage.completion_tokens == 1


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_transcriptions(client: openai.OpenAI, engine_server, fmt: str) -> None:
    wav = encode(tone(1.5, 22_050, 2), 22_050, "wav")
    out = client.audio.transcriptions.create(
        model=engine_server.model,
        file=("a.wav", wav),
        response_format=fmt,
        language="en",
        prompt="a tone",
        temperature=0,
    )
    text = out if isinstance(out, str) else out.text
    assert isinstance(text, str) and text


def test_shared_dir_handoff_matches_inline(client: openai.OpenAI, engine_server, tmp_path) -> None:
    """Same-host engines get clips as files (file:// URLs, as `alm serve` runs): the same greedy answers as
    inline base64, streamed too, and no file outlives its request."""
    shared = engine_server.shared_audio_dir
    settings = load_settings(
        engine_urls=[engine_server.url], shared_audio_dir=str(shared), transcription_max_tokens=8, **LIMITS
    )
    with serve(create_app(settings)) as url:
        files = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for parts in ([audio_part("wav", 2.0)], [audio_part("flac", 1.0), audio_part("mp3", 1.5, 48_000, 2)]):
            a, b = (
                c.chat.completions.create(
                    model=engine_server.model, messages=messages(*parts), max_tokens=6, temperature=0
                )
                for c in (client, files)
            )
            assert (a.choices[0].message.content, a.usage.prompt_tokens) == (
                b.choices[0].message.content,
                b.usage.prompt_tokens,
            )
        stream = files.chat.completions.create(
            model=engine_server.model, messages=messages(audio_part("ogg")), max_tokens=6, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        wav = encode(tone(1.5, 22_050, 2), 22_050, "wav")
        assert files.audio.transcriptions.create(model=engine_server.model, file=("a.wav", wav)).text
        with pytest.raises(openai.BadRequestError, match="NaN"):  # the first clip was written, then refused
            files.chat.completions.create(
                model=engine_server.model, max_tokens=1, messages=messages(audio_part(), audio_of(_nan_wav()))
            )
    assert list(shared.iterdir()) == []
    # The engine really reads the files: a directory it was not given is refused by vLLM itself.
    elsewhere = load_settings(engine_urls=[engine_server.url], shared_audio_dir=str(tmp_path), **LIMITS)
    with serve(create_app(elsewhere)) as url:
        resp = httpx.post(
            url + "/v1/chat/completions", timeout=60, json=chat_body(engine_server.model, audio_part(), max_tokens=1)
        )
        assert resp.status_code == 400 and "allowed-local-media-path" in resp.text


# ----------------------------------------------------------------------------------------------- bad inputs


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def audio_of(raw: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(raw), "format": fmt}}


def _nan_wav() -> bytes:
    import io

    import soundfile as sf

    samples = tone(1.0)
    samples[10] = np.nan
    buf = io.BytesIO()
    sf.write(buf, samples, 16_000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


WAV = encode(tone(1.0), 16_000, "wav")
P0 = "messages[0].content[0]"
CORPUS = [
    # (id, body (bytes = raw payload), status, code, param)
    ("malformed-json", b'{"model": "m", "messages": [', 400, "invalid_json", None),
    ("json-array", b"[1, 2]", 400, "invalid_json", None),
    ("no-model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request", "model"),
    ("no-messages", {"model": "M", "messages": []}, 400, "invalid_request", "messages"),
    ("bad-base64", [{"type": "input_audio", "input_audio": {"data": "%%%not-base64", "format": "wav"}}],
     400, "invalid_base64", P0 + ".input_audio.data"),
    # A file cut short is served up to where it ends; one with less than the minimum present is refused.
    ("truncated-wav-60-bytes", [audio_of(WAV[:60])], 400, "audio_too_short", P0 + ".input_audio.data"),
    ("truncated-mp3", [audio_of(encode(tone(2.0), 16_000, "mp3")[:600], "mp3")], 400, "audio_too_short",
     P0 + ".input_audio.data"),
    ("corrupt", [audio_of(b"RIFF" + bytes(range(256)) * 8)], 400, "invalid_audio", P0 + ".input_audio.data"),
    ("empty", [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], 400, "audio_empty",
     P0 + ".input_audio.data"),
    ("zero-samples", [audio_of(encode(np.zeros((0, 1), np.float32), 16_000, "wav"))], 400, "audio_empty",
     P0 + ".input_audio.data"),
    ("nan", [audio_of(_nan_wav())], 400, "audio_not_finite", P0 + ".input_audio.data"),
    ("too-short", [audio_of(encode(tone(0.05), 16_000, "wav"))], 400, "audio_too_short",
     P0 + ".input_audio.data"),
    ("over-long", [audio_of(encode(tone(25.0, 8_000), 8_000, "ogg"), "ogg")], 400, "audio_too_long",
     P0 + ".input_audio.data"),
    ("over-size", [audio_of(encode(tone(14.0), 16_000, "wav"))], 413, "audio_too_large",
     P0 + ".input_audio.data"),
    ("unsupported-format", [audio_of(WAV, "xyz")], 400, "unsupported_audio_format", P0 + ".input_audio.format"),
    ("missing-format", [{"type": "input_audio", "input_audio": {"data": b64(WAV)}}], 400, "invalid_request",
     P0 + ".input_audio.format"),
    ("too-many-clips", [audio_of(WAV), audio_of(WAV), audio_of(WAV)], 400, "too_many_audio_clips",
     "messages[0].content[2]"),
    ("http-url-disabled", [{"type": "audio_url", "audio_url": {"url": "http://169.254.169.254/a.wav"}}],
     400, "audio_url_not_allowed", P0 + ".audio_url.url"),
    ("bad-data-url", [{"type": "audio_url", "audio_url": {"url": "data:audio/wav," + b64(WAV)}}],
     400, "invalid_audio_url", P0 + ".audio_url.url"),
    ("unknown-model", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found",
     "model"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code", "param"), [pytest.param(*c[1:], id=c[0]) for c in CORPUS])
def test_bad_input_corpus(gateway: str, engine_server, body, status: int, code: str, param: str | None) -> None:
    if isinstance(body, list):
        body = {"model": engine_server.model, "messages": [{"role": "user", "content": body}], "max_tokens": 1}
    if isinstance(body, dict) and body.get("model") == "M":
        body["model"] = engine_server.model
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(
        gateway + "/v1/chat/completions", headers={"content-type": "application/json"}, timeout=60, **kwargs
    )
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"]) == (code, param)
    assert err["type"] == ("rate_limit_error" if status == 429 else "invalid_request_error")
    assert re.match(r"^[0-9a-f]{32}$", resp.headers["x-request-id"])


def test_still_serving_after_corpus(client: openai.OpenAI, engine_server, gateway: str) -> None:
    resp = httpx.post(
        gateway + "/v1/chat/completions",
        content=b"x" * 3_000_000,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    empty = httpx.post(
        gateway + "/v1/audio/transcriptions", files={"file": ("a.wav", b"")}, data={"model": engine_server.model}
    )
    assert (empty.status_code, empty.json()["error"]["param"]) == (400, "file")
    r = client.chat.completions.create(model=engine_server.model, messages=messages(audio_part()), max_tokens=1)
    assert r.usage.completion_tokens == 1
    assert httpx.get(gateway + "/ready").status_code == 200


# ----------------------------------------------------------------------------------------------- load/abort/auth


def engine_metric(engine_url: str, name: str) -> float:
    text = httpx.get(engine_url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


LONG = dict(max_tokens=7000, extra_body={"ignore_eos": True})


def test_disconnect_mid_stream_aborts_engine_request(client: openai.OpenAI, engine_server) -> None:
    tokens = "vllm:generation_tokens_total"
    before = engine_metric(engine_server.url, tokens)
    stream = client.chat.completions.create(
        model=engine_server.model, messages=messages(audio_part()), stream=True, **LONG
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert engine_metric(engine_server.url, "vllm:num_requests_running") == 1
    stream.close()
    wait_until(lambda: engine_metric(engine_server.url, "vllm:num_requests_running") == 0, 60, 0.05)
    # aborted, not finished: far fewer than the 7000 tokens asked for were generated
    assert engine_metric(engine_server.url, tokens) - before < LONG["max_tokens"] / 2


def test_overload_is_429(engine_server) -> None:
    settings = load_settings(engine_urls=[engine_server.url], max_inflight_per_engine=1, max_queue=0)
    with serve(create_app(settings)) as url:
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = sdk.chat.completions.create(model=engine_server.model, messages=messages(), stream=True, **LONG)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as info:
            sdk.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1)
        assert info.value.response.headers["retry-after"] == "1"
        stream.close()
        wait_until(lambda: engine_metric(engine_server.url, "vllm:num_requests_running") == 0, 60, 0.05)
        assert sdk.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1).usage


@pytest.mark.parametrize("keys", [[], ["sk-test-1"]])
def test_auth_on_and_off(engine_server, keys: list[str]) -> None:
    with serve(create_app(load_settings(engine_urls=[engine_server.url], api_keys=keys))) as url:
        good = openai.OpenAI(base_url=url + "/v1", api_key="sk-test-1", max_retries=0)
        bad = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
        assert good.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1).usage
        if keys:
            with pytest.raises(openai.AuthenticationError):
                bad.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1)
        else:
            assert bad.models.list().data


def test_request_beyond_the_context_is_refused_at_the_gateway(client: openai.OpenAI, engine_server) -> None:
    # The engine's card says 8192 (--max-model-len); 10 s of audio is 50 tokens, + 8190 to generate cannot fit.
    assert httpx.get(engine_server.url + "/v1/models").json()["data"][0]["max_model_len"] == 8192
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=engine_server.model, messages=messages(audio_part("wav", 10.0)), max_tokens=8190
        )
    assert info.value.body == {
        "message": "This model's maximum context length is 8192 tokens. However, you requested at least 8240 tokens "
        "(at least 50 in the messages: 50 audio tokens in 1 clip and at least 0 text tokens; 8190 in the "
        "completion). Please reduce the length of the messages or max_tokens.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "context_length_exceeded",
    }
