"""``usage.audio_seconds``: the byte edit of engine answers (server/relay/usage.py), its cost, and the real openai SDK
reading it from the gateway in front of the real vLLM engine, streamed and not."""

from __future__ import annotations

import json
import timeit
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from server.api.app import create_app
from server.config import load_settings
from server.relay.usage import audio_seconds_field, with_audio_seconds
from tests.support.audio_synth import audio_part, chat_body
from tests.support.fakes import serve

USAGE = {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}


def completion(**fields) -> dict:
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    doc.update(fields)
    return doc


def edited(doc: dict, seconds: float = 2.5, **dump) -> dict:
    raw = json.dumps(doc, **dump).encode()
    return json.loads(with_audio_seconds(raw, audio_seconds_field(seconds)))


@pytest.mark.parametrize("dump", [{"separators": (",", ":")}, {}, {"indent": 2}], ids=["compact", "spaced", "indented"])
def test_the_field_is_added_to_the_usage_object(dump: dict) -> None:
    assert edited(completion(), **dump) == completion(usage={"audio_seconds": 2.5, **USAGE})


@pytest.mark.parametrize(
    "content",
    ['"usage":{"x":1}', "usage", '{"usage": {}}', "\\", '"usage"'],
    ids=["key-in-content", "word", "json-in-content", "backslash", "quoted"],
)
def test_text_that_looks_like_usage_is_left_alone(content: str) -> None:
    doc = completion()
    doc["choices"][0]["message"]["content"] = content
    want = completion(usage={"audio_seconds": 2.5, **USAGE})
    want["choices"][0]["message"]["content"] = content
    assert edited(doc) == want
    doc["choices"][0]["message"]["content"] = "usage"  # a string value "usage" after the usage object
    doc["system_fingerprint"] = "usage"
    assert edited(doc)["usage"]["audio_seconds"] == 2.5


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({"usage": None}, {"usage": None}),
        ({"choices": []}, {"choices": []}),
        ({"usage": {}}, {"usage": {"audio_seconds": 0.001}}),
        ({"usage": {"prompt_tokens_details": {"cached_tokens": 0}}}, None),
    ],
    ids=["null", "absent", "empty", "nested"],
)
def test_edge_shapes(doc: dict, want: dict | None) -> None:
    got = edited(doc, 0.0012)
    if want is None:
        want = {"usage": {"audio_seconds": 0.001, **doc["usage"]}}
    assert got == want


def test_a_document_without_usage_is_returned_as_is() -> None:
    event = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    assert with_audio_seconds(event, audio_seconds_field(1.0)) is event


def test_the_openai_sdk_reads_the_field() -> None:
    body = with_audio_seconds(json.dumps(completion()).encode(), audio_seconds_field(12.3456))
    parsed = ChatCompletion.model_validate_json(body)
    assert parsed.usage is not None and parsed.usage.audio_seconds == 12.346  # type: ignore[attr-defined]  # extra
    assert parsed.usage.total_tokens == 45
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [], "usage": USAGE}
    event = with_audio_seconds(b"data: " + json.dumps(chunk).encode() + b"\n\n", audio_seconds_field(3.0))
    parsed_chunk = ChatCompletionChunk.model_validate_json(event[len(b"data: ") :])
    assert parsed_chunk.usage is not None and parsed_chunk.usage.model_extra == {"audio_seconds": 3.0}


def test_cost_of_the_edit() -> None:
    """Measures (prints) the CPU the edit adds per answer; asserts only the result (no timed assertions)."""
    doc = completion()
    doc["choices"][0]["message"]["content"] = "word " * 100  # a typical short answer: ~1 KB of JSON
    typical = json.dumps(doc, separators=(",", ":")).encode()
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    member = audio_seconds_field(7.5)
    n = 20_000
    answer_us = timeit.timeit(lambda: with_audio_seconds(typical, member), number=n) / n * 1e6
    event_us = timeit.timeit(lambda: with_audio_seconds(chunk, member), number=n) / n * 1e6
    field_us = timeit.timeit(lambda: audio_seconds_field(7.5), number=n) / n * 1e6
    print(
        f"\nusage edit: {answer_us:.2f} µs per {len(typical)} B answer, {event_us:.2f} µs per stream chunk without "
        f"usage, {field_us:.2f} µs per request for the member"
    )
    assert json.loads(with_audio_seconds(typical, member))["usage"]["audio_seconds"] == 7.5


# ------------------------------------------------------------------ real engine, real SDK


@pytest.fixture(scope="module")
def client(engine_server) -> Iterator[openai.OpenAI]:
    settings = load_settings(engine_urls=[engine_server.url], health_interval_s=0.5, max_audio_seconds=20.0)
    with serve(create_app(settings)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def messages(*parts: dict) -> list:
    return chat_body("m", *parts)["messages"]


def test_non_streamed_answers_report_audio_seconds(client: openai.OpenAI, engine_server) -> None:
    two_clips = messages(audio_part("wav", 2.0), audio_part("flac", 1.5))
    r = client.chat.completions.create(model=engine_server.model, messages=two_clips, max_tokens=3, temperature=0)
    assert r.usage is not None and r.usage.model_extra == {"audio_seconds": 3.5} and r.usage.completion_tokens == 3
    text = client.chat.completions.create(model=engine_server.model, messages=messages(), max_tokens=1)
    assert text.usage is not None and text.usage.model_extra == {"audio_seconds": 0.0}


def test_the_usage_chunk_of_a_stream_reports_audio_seconds(client: openai.OpenAI, engine_server) -> None:
    stream = client.chat.completions.create(
        model=engine_server.model,
        messages=messages(audio_part("wav", 2.0)),
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].model_extra == {"audio_seconds": 2.0} and usage[0].completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].usage is usage[0]
