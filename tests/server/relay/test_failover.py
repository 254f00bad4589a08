"""Stream failover after the first byte, against scriptable fake engines that die mid-stream: the resumed
request (continued assistant message, reduced max_tokens, no generation prompt), one uninterrupted stream for
the client, never two engines at once, bounded attempts, clip files kept until the stream ends; and the event
tracking of server/relay/resume.py on its own. (Two real engines: test_failover_engine.py.)"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from server.relay.resume import StreamText, resume_body, resume_plan
from tests.server.relay.test_streams import in_flight, metric
from tests.support.audio_synth import audio_part, chat_body
from tests.support.fakes import FakeEngine, serve
from tests.support.waiting import wait_until

M = "fake-model"
A_ID, B_ID, A_CREATED, B_CREATED = "chatcmpl-a", "chatcmpl-b", 1_700_000_001, 1_700_000_999


def chunk(cid: str, created: int, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    """One event as vLLM 0.32 writes it (compact JSON, these members in this order)."""
    doc: dict = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": M}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    choice.update({"stop_reason": None} if finish else {}, token_ids=None)
    doc["choices"] = [] if usage else [choice]
    if usage:
        doc["usage"] = usage
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def script(cid: str, created: int, words: list[str], finish: str = "stop", usage: dict | None = None) -> list[bytes]:
    """A whole vLLM stream: the role delta, one content delta per token, the finish chunk, usage, [DONE]."""
    out = [chunk(cid, created, {"role": "assistant", "content": ""})]
    out += [chunk(cid, created, {"content": w}) for w in words]
    out.append(chunk(cid, created, {"content": ""}, finish=finish))
    if usage:
        out.append(chunk(cid, created, {}, usage=usage))
    return [*out, b"data: [DONE]\n\n"]


WORDS = ["Hel", "lo", ' "w', 'orld"', "\\n", " é", "!"]


def sdk(gw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=60)


def start(stack: ExitStack, engine: FakeEngine, on_chat=None) -> str:
    """Serve a fake engine; ``on_chat()`` runs as each chat request arrives (before the engine answers)."""
    app = engine.app()
    if on_chat is not None:

        @app.middleware("http")
        async def record(request, call_next):
            if request.url.path == "/v1/chat/completions":
                on_chat()
            return await call_next(request)

    return stack.enter_context(serve(app))


def gateway(stack: ExitStack, urls: list[str], **overrides) -> str:
    from server.api.app import create_app
    from server.config import load_settings

    settings = load_settings(engine_urls=urls, health_interval_s=0.2, routing="least-request", **overrides)
    gw = stack.enter_context(serve(create_app(settings)))
    for url in urls:  # both known healthy: a fresh gateway's first request then goes to the first engine
        wait_until(lambda url=url: metric(gw, f'alm_gateway_engine_healthy{{engine="{url[7:]}"}}') == 1)
    return gw


@pytest.mark.parametrize("how", ["killed", "ends_without_done"])
def test_a_stream_resumes_on_another_engine_as_one_stream(stack: ExitStack, how: str) -> None:
    sent = 4  # the role delta and 3 tokens reach the client before engine A fails
    a_chunks = script(A_ID, A_CREATED, WORDS[:6])
    if how == "killed":  # the connection drops where the 5th event would be
        a = FakeEngine(mode="raw", raw_chunks=a_chunks, die_after=sent)
    else:  # the engine ends its answer cleanly, without finish_reason or [DONE]
        a = FakeEngine(mode="raw", raw_chunks=a_chunks[:sent])
    usage = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, WORDS[3:], usage=usage))
    a_url = start(stack, a)
    seen: list[float] = []
    b_url = start(stack, b, on_chat=lambda: seen.append(in_flight(gw, a_url)))
    gw = gateway(stack, [a_url, b_url])
    stream = sdk(gw).chat.completions.create(
        model=M,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=10,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {A_ID} and {c.created for c in chunks} == {A_CREATED}
    assert [c.choices[0].delta.role for c in chunks if c.choices] == ["assistant"] + [None] * len(WORDS) + [None]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [c.usage.model_dump(exclude_none=True) for c in chunks if c.usage] == [
        {"prompt_tokens": 17, "completion_tokens": 7, "total_tokens": 24, "audio_seconds": 0}
    ]  # the whole generation's (the 3 tokens before the resume were part of B's prompt), with the gateway's field
    (first,), (resumed,) = a.bodies, b.bodies
    assert resumed["messages"] == [*first["messages"], {"role": "assistant", "content": "".join(WORDS[:3])}]
    assert resumed["continue_final_message"] is True and resumed["add_generation_prompt"] is False
    assert resumed["max_tokens"] == 7 and first["max_tokens"] == 10
    assert {k: v for k, v in resumed.items() if k not in ("messages", "max_tokens")} == {
        **{k: v for k, v in first.items() if k not in ("messages", "max_tokens")},
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    assert seen == [0]  # A's slot was released before B was asked: never two engines at once
    wait_until(lambda: in_flight(gw, a_url) == 0 and in_flight(gw, b_url) == 0)
    assert metric(gw, 'alm_gateway_stream_resumes_total{outcome="resumed"}') == 1
    assert metric(gw, 'alm_gateway_upstream_errors_total{kind="stream_interrupted"}') == 1


def test_a_stream_resumes_after_the_request_deadline(stack: ExitStack) -> None:
    """The deadline bounds the wait for the first byte; a resume long after it gets a deadline of its own."""
    a = FakeEngine(mode="raw", raw_chunks=script(A_ID, A_CREATED, ["x", "y", "z"]), die_after=3, event_delay_s=0.5)
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, ["z"]))
    gw = gateway(stack, [start(stack, a), start(stack, b)], request_timeout_s=1.0)
    create = sdk(gw).chat.completions.create
    chunks = list(create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True))  # A dies at ~1.5 s
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "xyz" and len(b.bodies) == 1


def test_attempts_are_bounded_and_the_last_failure_ends_the_stream(stack: ExitStack) -> None:
    engines = [FakeEngine(mode="raw", raw_chunks=script(f"id{i}", i, ["x", "y", "z"]), die_after=2) for i in range(3)]
    urls = [start(stack, e) for e in engines]
    gw = gateway(stack, urls, max_attempts=2)
    got = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for c in sdk(gw).chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(c.choices[0].delta.content)
    assert got == ["", "x", "x"]  # one token from each of the two engines allowed, then the error event
    assert [len(e.bodies) for e in engines] == [1, 1, 0]
    assert engines[1].bodies[0]["messages"][-1] == {"role": "assistant", "content": "x"}
    assert metric(gw, 'alm_gateway_stream_resumes_total{outcome="resumed"}') == 1
    assert metric(gw, 'alm_gateway_stream_resumes_total{outcome="failed"}') == 1


@pytest.mark.parametrize(
    ("fields", "overrides"),
    [
        ({}, {"stream_failover": False}),
        ({"logprobs": True}, {}),
        ({"n": 2}, {}),
        ({"response_format": {"type": "json_object"}}, {}),
    ],
    ids=["failover_off", "logprobs", "n2", "json"],
)
def test_streams_that_cannot_resume_end_with_an_error_event(stack: ExitStack, fields: dict, overrides: dict) -> None:
    a = FakeEngine(mode="raw", raw_chunks=script(A_ID, A_CREATED, ["x", "y"]), die_after=2)
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, ["y"]))
    gw = gateway(stack, [start(stack, a), start(stack, b)], **overrides)
    with httpx.stream("POST", gw + "/v1/chat/completions", json=chat_body(M, stream=True, **fields)) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["error"]["message"] == "the engine stream was interrupted"
    assert len(events) == 3 and b.bodies == []


def test_a_generation_finished_before_the_engine_died_is_not_resumed(stack: ExitStack) -> None:
    a = FakeEngine(mode="raw", raw_chunks=script(A_ID, A_CREATED, ["x"], finish="length"), die_after=3)
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, ["y"]))
    gw = gateway(stack, [start(stack, a), start(stack, b)])
    chunks = list(sdk(gw).chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"] and b.bodies == []


def test_a_generation_at_its_token_limit_is_closed_not_resumed(stack: ExitStack) -> None:
    # A pause after each chunk: an engine that "dies" right after a write may lose that write with the connection.
    a = FakeEngine(mode="raw", raw_chunks=script(A_ID, A_CREATED, ["x", "y", "z"]), die_after=3, event_delay_s=0.05)
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, ["y"]))
    gw = gateway(stack, [start(stack, a), start(stack, b)])
    create = sdk(gw).chat.completions.create
    chunks = list(create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=2))
    assert [(c.id, c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks] == [
        (A_ID, "", None),
        (A_ID, "x", None),
        (A_ID, "y", None),
        (A_ID, None, "length"),
    ]
    assert b.bodies == []


def test_clip_files_live_until_a_resumed_stream_ends(stack: ExitStack, tmp_path: Path) -> None:
    a = FakeEngine(mode="raw", raw_chunks=script(A_ID, A_CREATED, ["x", "y"]), die_after=2)
    b = FakeEngine(mode="raw", raw_chunks=script(B_ID, B_CREATED, ["y"]), stall_after=2)
    present: list[bool] = []

    def clip_present() -> None:
        url = b.bodies[-1]["messages"][0]["content"][0]["audio_url"]["url"] if b.bodies else None
        present.append(url is not None and Path(url.removeprefix("file://")).exists())

    a_url, b_url = start(stack, a), start(stack, b)
    gw = gateway(stack, [a_url, b_url], shared_audio_dir=str(tmp_path))
    with httpx.stream(
        "POST", gw + "/v1/chat/completions", json=chat_body(M, audio_part(), stream=True), timeout=30
    ) as resp:
        lines = resp.iter_lines()
        while '"y"' not in next(lines):  # B's token: the stream was resumed
            pass
        wait_until(lambda: len(b.bodies) == 1)
        clip_present()
        assert list(tmp_path.glob("*.alm.wav")) != []
    assert present == [True]  # B could read the clip, after A had read it and died
    wait_until(lambda: list(tmp_path.glob("*.alm.wav")) == [])  # removed once the client's stream ended
    assert a.bodies[0]["messages"][0]["content"][0] == b.bodies[0]["messages"][0]["content"][0]


# ------------------------------------------------------------------ server/relay/resume.py on its own


def test_tracking_reads_escaped_text_and_runs_of_events() -> None:
    events = script(A_ID, A_CREATED, WORDS)
    text = StreamText()
    text.begin(events[0] + events[1])  # a first run of two events: the role delta and a token
    for run in (events[2] + events[3], *events[4:]):
        assert text.feed(run) is run  # the first engine's events pass untouched
    assert text.sent_text() == "".join(WORDS) and text.tokens == len(WORDS) + 1  # + the finish chunk's
    assert text.finished and text.done and text.resumable()


def test_a_resumed_engine_reads_as_the_first() -> None:
    text = StreamText()
    text.begin(script(A_ID, A_CREATED, [])[0])
    text.feed(chunk(A_ID, A_CREATED, {"content": "a"}))
    b = script(B_ID, B_CREATED, ["b"], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    assert text.resumed(b[0] + b[1]) == chunk(A_ID, A_CREATED, {"content": "b"})  # role delta dropped
    assert text.feed(b[2]) == chunk(A_ID, A_CREATED, {"content": ""}, finish="stop")
    usage = json.loads(text.feed(b[3])[6:])
    assert (usage["id"], usage["created"], usage["usage"]) == (
        A_ID,
        A_CREATED,
        {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11},
    )
    assert text.sent_text() == "ab"


def test_the_resume_body_and_what_is_resumable() -> None:
    body = chat_body(M, max_tokens=10, max_completion_tokens=12, min_tokens=5, stream=True)
    out = json.loads(resume_body(json.dumps(body).encode(), 'it "is"', 4))
    assert out["messages"][-1] == {"role": "assistant", "content": 'it "is"'}
    assert (out["max_tokens"], out["max_completion_tokens"], out["min_tokens"]) == (6, 8, 1)
    plan = resume_plan(body)
    assert plan is not None and plan.limit == 12  # vLLM's limit: max_completion_tokens, when set
    for bad in ({"tools": [{"type": "function"}]}, {"n": 3}, {"echo": True}, {"continue_final_message": True}):
        assert resume_plan({**body, **bad}) is None
