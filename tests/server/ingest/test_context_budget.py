"""The whole-request context limit: audio tokens + text (a lower bound) + requested output against the engines'
``max_model_len``, refused at the gateway before any engine sees the request."""

from __future__ import annotations

import base64

import httpx
import pytest
from pydantic import ValidationError

from server.config import load_settings
from server.families.tokens import midashenglm
from server.guards.output import requested_output
from server.ingest.context_budget import text_tokens_min
from server.routing.health import _max_model_lens
from tests.support.audio_synth import audio_part, chat_body, encode, tone

M = "fake-model"
HEAD = "This model's maximum context length is {} tokens. However, "


def post(gw: str, body: dict) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body, timeout=30)


def refusal(resp: httpx.Response, param: str, message: str) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": "context_length_exceeded",
        }
    }


def clip(seconds: float) -> dict:
    return audio_part("wav", seconds)  # 16 kHz: 10 s → 50 audio tokens, 1 s → 5


def over_output(limit: int, total: int, prompt: int, audio: int, clips: str, output: int, name: str) -> str:
    return HEAD.format(limit) + (
        f"you requested at least {total} tokens (at least {prompt} in the messages: {audio} audio tokens in "
        f"{clips} and at least 0 text tokens; {output} in the completion). Please reduce the length of the messages "
        f"or {name}."
    )


# --------------------------------------------------------------------------- the counts


@pytest.mark.parametrize(
    ("seconds", "tokens"),
    [(0.2, 1), (1.0, 5), (10.0, 50), (30.0, 150), (600.0, 3000)],
)
def test_midashenglm_audio_tokens(seconds: float, tokens: int) -> None:
    assert midashenglm(round(seconds * 16_000)) == tokens


def test_midashenglm_formula_matches_the_plugin() -> None:
    processing = pytest.importorskip("model_plugins.midashenglm.processing")
    from model_plugins.midashenglm.config import DashengEncoderConfig

    encoder = DashengEncoderConfig()
    shortest = processing.min_audio_samples(encoder, 5)
    for n in [1, 100, shortest - 1, shortest, shortest + 1, 3200, 16_000, 159_999, 160_000, 480_000, 9_600_000]:
        padded = max(n, shortest)  # shorter clips are zero-padded to one token
        assert midashenglm(n) == processing.num_audio_tokens(padded, encoder, 5), n


def test_text_tokens_lower_bound() -> None:
    messages = [
        {"role": "system", "content": "ab cd"},  # 4 non-whitespace bytes
        {"role": "user", "content": [{"type": "text", "text": "é\n\tf "}, {"type": "input_audio"}]},  # 3
        {"role": "assistant", "content": "x" * 1000},  # templates may cut assistant turns: not counted
        {"role": "developer", "content": "x" * 1000},  # Qwen2.5's template drops it: not counted
        {"role": "tool", "content": "gh"},  # 2
        "not a message",
    ]
    assert text_tokens_min(messages, 1) == 9
    assert text_tokens_min(messages, 4) == 2
    assert text_tokens_min(messages, 0) == 0
    assert text_tokens_min("not a list", 1) == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 7}, ("max_tokens", 7)),
        ({"max_tokens": 7, "max_completion_tokens": 9}, ("max_completion_tokens", 9)),
        ({"max_tokens": 7, "max_completion_tokens": None}, ("max_tokens", 7)),
        ({"max_tokens": "7"}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": -1}, None),
        ({"max_tokens": 7.0}, None),
    ],
)
def test_requested_output(body: dict, expected: tuple[str, int] | None) -> None:
    assert requested_output(body) == expected


def test_max_model_len_from_model_cards() -> None:
    cards = [
        {"id": "a", "max_model_len": 8192},
        {"id": "b"},
        {"id": "c", "max_model_len": "8192"},
        {"id": "d", "max_model_len": True},
        {"id": "e", "max_model_len": 0},
        "junk",
    ]
    assert _max_model_lens(cards) == {"a": 8192}


def test_unknown_audio_token_model_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="audio_token_model"):
        load_settings(audio_token_model="whisper")


# --------------------------------------------------------------------------- through the gateway


def test_output_beyond_the_context_is_refused_before_the_engine(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    resp = post(gw, chat_body(M, clip(10.0), max_tokens=51))
    refusal(resp, "max_tokens", over_output(100, 101, 50, 50, "1 clip", 51, "max_tokens"))
    assert fake.bodies == []


def test_request_that_just_fits_reaches_the_engine(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    assert post(gw, chat_body(M, clip(10.0), max_tokens=50)).status_code == 200
    assert post(gw, chat_body(M, clip(10.0), clip(9.9), max_tokens=None)).status_code == 200  # 99: one to spare
    assert len(fake.bodies) == 2


def test_prompt_that_leaves_no_room_names_the_messages(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    resp = post(gw, chat_body(M, clip(10.0), clip(10.0), max_tokens=None))
    message = HEAD.format(100) + (
        "the prompt holds at least 100 tokens (100 audio tokens in 2 clips and at least 0 text tokens), which "
        "leaves no room for output. Please send shorter or fewer audio clips, or less text."
    )
    refusal(resp, "messages", message)
    assert fake.bodies == []


def test_max_completion_tokens_is_what_counts_when_given(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    resp = post(gw, chat_body(M, clip(10.0), max_tokens=1, max_completion_tokens=60))
    refusal(resp, "max_completion_tokens", over_output(100, 110, 50, 50, "1 clip", 60, "max_completion_tokens"))
    assert fake.bodies == []


def test_output_alone_beyond_the_context(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url], context_reserve_output=False)
    resp = post(gw, {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 101})
    refusal(resp, "max_tokens", HEAD.format(100) + "max_tokens is 101. Please reduce max_tokens.")
    assert fake.bodies == []


def test_without_output_reservation_only_the_prompt_must_fit(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url], context_reserve_output=False)
    assert post(gw, chat_body(M, clip(10.0), max_tokens=100)).status_code == 200  # vLLM shortens the output
    assert len(fake.bodies) == 1


def test_unknown_max_model_len_means_no_check(start_fake, start_gateway) -> None:
    fake, url = start_fake()  # its /v1/models carries no max_model_len
    gw = start_gateway([url])
    assert post(gw, chat_body(M, clip(10.0), max_tokens=10**9)).status_code == 200
    assert len(fake.bodies) == 1


@pytest.mark.parametrize(
    "overrides", [{"context_check": False}, {"audio_token_model": "none"}], ids=["check_off", "audio_uncounted"]
)
def test_knobs_turn_the_audio_check_off(start_fake, start_gateway, overrides: dict) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url], **overrides)
    assert post(gw, chat_body(M, clip(10.0), clip(10.0), max_tokens=None)).status_code == 200
    assert len(fake.bodies) == 1


def test_smallest_length_among_a_models_engines_wins(start_fake, start_gateway) -> None:
    small, small_url = start_fake(max_model_len=100)
    large, large_url = start_fake(max_model_len=1000)
    gw = start_gateway([small_url, large_url])
    for _ in range(2):
        resp = post(gw, chat_body(M, clip(10.0), max_tokens=60))
        refusal(resp, "max_tokens", over_output(100, 110, 50, 50, "1 clip", 60, "max_tokens"))
    assert small.bodies == [] and large.bodies == []


def test_text_counts_with_its_lower_bound(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url], context_text_bytes_per_token=2)
    text = "word " * 40  # 160 non-whitespace bytes → at least 80 tokens
    body = {"model": M, "messages": [{"role": "user", "content": text}], "max_tokens": 30}
    resp = post(gw, body)
    message = HEAD.format(100) + (
        "you requested at least 110 tokens (at least 80 in the messages: 0 audio tokens in 0 clips and at least "
        "80 text tokens; 30 in the completion). Please reduce the length of the messages or max_tokens."
    )
    refusal(resp, "max_tokens", message)
    body["messages"] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]
    assert post(gw, body).status_code == 200  # an assistant turn is not counted
    assert len(fake.bodies) == 1


def test_streaming_requests_are_refused_before_the_stream(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    resp = post(gw, chat_body(M, clip(10.0), max_tokens=51, stream=True))
    refusal(resp, "max_tokens", over_output(100, 101, 50, 50, "1 clip", 51, "max_tokens"))
    assert fake.bodies == []
    with httpx.stream(
        "POST", gw + "/v1/chat/completions", json=chat_body(M, clip(10.0), max_tokens=50, stream=True)
    ) as ok:
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")
        assert b"data: [DONE]" in b"".join(ok.iter_bytes())
    assert len(fake.bodies) == 1


def test_refusal_after_a_clip_removes_the_clips_already_handed_over(start_fake, start_gateway, tmp_path) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url], shared_audio_dir=str(tmp_path))
    resp = post(gw, chat_body(M, clip(10.0), clip(10.0), clip(1.0), max_tokens=None))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    assert "100 audio tokens in 2 clips" in resp.json()["error"]["message"]  # refused at the second clip
    assert list(tmp_path.iterdir()) == [] and fake.bodies == []


def test_transcription_too_long_for_the_context_names_the_file(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=50)
    gw = start_gateway([url])
    wav = encode(tone(10.0), 16_000, "wav")
    resp = httpx.post(gw + "/v1/audio/transcriptions", data={"model": M}, files={"file": ("a.wav", wav)}, timeout=30)
    message = HEAD.format(50) + (
        "the prompt holds at least 50 tokens (50 audio tokens in 1 clip and at least 0 text tokens), which "
        "leaves no room for output. Please send shorter or fewer audio clips, or less text."
    )
    refusal(resp, "file", message)
    short = encode(tone(9.0), 16_000, "wav")  # 45 tokens: the gateway's own max_tokens (448) is not reserved
    ok = httpx.post(gw + "/v1/audio/transcriptions", data={"model": M}, files={"file": ("a.wav", short)}, timeout=30)
    assert ok.status_code == 200 and len(fake.bodies) == 1


def test_audio_data_url_is_counted_like_input_audio(start_fake, start_gateway) -> None:
    fake, url = start_fake(max_model_len=100)
    gw = start_gateway([url])
    data = base64.b64encode(encode(tone(10.0), 16_000, "wav")).decode()
    part = {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}}
    resp = post(gw, chat_body(M, part, max_tokens=51))
    refusal(resp, "max_tokens", over_output(100, 101, 50, 50, "1 clip", 51, "max_tokens"))
    assert fake.bodies == []
