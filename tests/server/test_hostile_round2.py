"""Hostile input, round 2 (issue 17, the low findings): a clip file half-written on a full disk, resumed streams
whose deltas hold several tokens, a client that never reads its stream, a megabyte model name, an unknown
model's audio, and what ``/ready`` and ``/metrics`` tell a client without a key."""

from __future__ import annotations

import errno
import json
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

import server.ingest.prepare
from alm.processes import free_port
from server.api.app import create_app
from server.api.http_server import uvicorn_config
from server.config import load_settings
from server.ingest.shared_audio import SharedAudioDir
from server.relay.resume import Resume, StreamText, resume_body, resume_plan
from server.relay.usage import without_usage
from tests.server.relay.test_failover import A_CREATED, A_ID, B_CREATED, B_ID, M, chunk, gateway, sdk, start
from tests.server.relay.test_streams import in_flight, metric
from tests.support.audio_synth import audio_part, chat_body, encode, tone
from tests.support.fakes import FakeEngine, serve
from tests.support.hostile import RawClient
from tests.support.waiting import wait_until

# ------------------------------------------------------------------ a clip file that failed half-way


def test_a_clip_write_that_fails_half_way_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_full(self: Path, data: bytes) -> int:
        with self.open("wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    shared = SharedAudioDir(tmp_path, max_age_s=60)
    with pytest.raises(OSError, match="No space"):
        shared.write(np.zeros(16000, np.float32))
    assert shared.try_write(np.zeros(16000, np.float32)) is None  # the request goes on with the clip inline
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ resumed streams: counts from usage


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def counted(cid: str, created: int, prompt: int, words: list[str], per_delta: int, finish: str | None) -> list[bytes]:
    """A vLLM stream asked for continuous usage: every event carries the usage so far, ``per_delta`` tokens
    a delta (``stream_interval``), then the usage chunk and [DONE] when ``finish`` is set."""
    out = [_with(chunk(cid, created, {"role": "assistant", "content": ""}), usage(prompt, 0))]
    for i, word in enumerate(words, 1):
        end = finish if i == len(words) else None
        out.append(_with(chunk(cid, created, {"content": word}, finish=end), usage(prompt, i * per_delta)))
    if finish is not None:
        out.append(chunk(cid, created, {}, usage=usage(prompt, len(words) * per_delta)))
        out.append(b"data: [DONE]\n\n")
    return out


def _with(event: bytes, use: dict) -> bytes:
    """``event`` with a usage member, as vLLM writes per-event usage (after the choices)."""
    return event[: -len(b"}\n\n")] + b',"usage":' + json.dumps(use, separators=(",", ":")).encode() + b"}\n\n"


@pytest.mark.parametrize("asked", ["nothing", "include_usage", "continuous"])
def test_a_resume_counts_merged_deltas_from_usage(stack: ExitStack, asked: str) -> None:
    """3 tokens a delta (``stream_interval: 3``): A sends 2 deltas (6 tokens) and dies; B is asked for the 4 left
    of ``max_tokens`` 10 (counting deltas would ask for 8); the client sees the usage it asked for, and only
    that, of the whole generation."""
    a = FakeEngine(mode="raw", raw_chunks=counted(A_ID, A_CREATED, 20, ["ab", "cd"], 3, None), die_after=3)
    b = FakeEngine(mode="raw", raw_chunks=counted(B_ID, B_CREATED, 26, ["ef", "g"], 2, "length"))
    gw = gateway(stack, [start(stack, a), start(stack, b)])
    options = {
        "nothing": None,
        "include_usage": {"include_usage": True},
        "continuous": {"include_usage": True, "continuous_usage_stats": True},
    }[asked]
    extra = {"stream_interval": 3} | ({"stream_options": options} if options else {})
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10, **extra}
    with httpx.stream("POST", gw + "/v1/chat/completions", json=body, timeout=30) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "abcdefg"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "length"
    assert {e["id"] for e in events} == {A_ID}
    (first,), (resumed,) = a.bodies, b.bodies
    exact = {"include_usage": True, "continuous_usage_stats": True}
    assert first["stream_options"] == resumed["stream_options"] == exact
    assert resumed["max_tokens"] == 4 and resumed["stream_interval"] == 3
    with_usage = [e["usage"] for e in events if "usage" in e]
    whole = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, "audio_seconds": 0}
    if asked == "nothing":
        assert with_usage == []
    elif asked == "include_usage":
        assert with_usage == [whole] and events[-1]["choices"] == []
    else:  # every event: the role delta, 4 deltas, the usage chunk; B's counted on from A's 6 tokens
        assert [u["completion_tokens"] for u in with_usage] == [0, 3, 6, 8, 10, 10]
        assert with_usage[-1] == whole


def test_a_generation_at_its_limit_by_usage_is_closed_not_resumed(stack: ExitStack) -> None:
    a = FakeEngine(mode="raw", raw_chunks=counted(A_ID, A_CREATED, 20, ["ab", "cd", "ef"], 3, None), die_after=4)
    b = FakeEngine(mode="raw", raw_chunks=counted(B_ID, B_CREATED, 29, ["x"], 1, "stop"))
    gw = gateway(stack, [start(stack, a), start(stack, b)])
    create = sdk(gw).chat.completions.create
    chunks = list(create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=9))
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length" and b.bodies == []
    assert [c.usage for c in chunks] == [None] * len(chunks)


@pytest.mark.parametrize(
    ("limits", "left"),
    [
        ({"max_tokens": 4000.0}, {"max_tokens": 3990}),
        ({"max_tokens": 4e3, "min_tokens": 2e1}, {"max_tokens": 3990, "min_tokens": 10}),
        ({"max_completion_tokens": 50, "max_tokens": 8000}, {"max_completion_tokens": 40, "max_tokens": 7990}),
    ],
    ids=["float", "exponent", "completion_wins"],
)
def test_numeric_limits_in_any_json_form_are_resumed(limits: dict, left: dict) -> None:
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True, **limits}
    plan = resume_plan(body)
    assert plan is not None and plan.limit == next(iter(left.values())) + 10
    out = json.loads(resume_body(json.dumps(body).encode(), "x", 10))
    assert {k: out[k] for k in left} == left and all(type(out[k]) is int for k in left)


@pytest.mark.parametrize("value", [4000.5, "4000", True, float("inf")], ids=["fraction", "string", "bool", "inf"])
def test_a_limit_the_gateway_cannot_read_is_not_resumed(value: object) -> None:
    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": value}
    assert resume_plan(body) is None  # the engine judges it (refuses, or reads it its own way); no crash here


def test_usage_is_cut_as_vllm_writes_it() -> None:
    event = _with(chunk(A_ID, A_CREATED, {"content": 'a,"usage":{"x":1}}'}), {**usage(3, 2), "d": {"r": 0}})
    assert without_usage(event) == chunk(A_ID, A_CREATED, {"content": 'a,"usage":{"x":1}}'})
    assert without_usage(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    text = StreamText(Resume(None, usage=False, continuous=False, stream_options={}))
    events = counted(A_ID, A_CREATED, 5, ["a", "b"], 2, "stop")
    relayed = text.begin(events[0]) + b"".join(text.feed(e) for e in events[1:])
    assert b'"usage"' not in relayed and relayed.endswith(b"data: [DONE]\n\n")
    assert text.produced == 4 and text.tokens == 2 and text.finished and text.done


# ------------------------------------------------------------------ a client that never reads


def test_a_client_that_stops_reading_releases_its_slot(start_fake, start_gateway) -> None:
    engine, url = start_fake(stream_events=5000, event_padding=16 * 1024)
    gw = start_gateway([url], max_inflight_per_engine=1, client_write_timeout_s=1.0)
    client = RawClient(gw)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few events
    data = json.dumps(chat_body(M, stream=True)).encode()
    client.start("/v1/chat/completions", len(data), data)
    wait_until(lambda: len(engine.bodies) == 1)
    began = time.monotonic()
    wait_until(lambda: engine.aborts == ["streaming"], timeout_s=20)
    took = time.monotonic() - began
    assert took < 10, took  # the timeout (1 s) + a quarter, + filling the socket buffers
    wait_until(lambda: in_flight(gw, url) == 0)
    engine.stream_events, engine.event_padding = 2, 0
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body(M, stream=True), timeout=10)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")  # the one slot is free again
    assert engine.completed >= 1
    client.close()


def test_the_connection_of_a_client_that_stops_reading_is_dropped(start_fake, stack: ExitStack) -> None:
    """uvicorn closes a connection only once its client has taken what was written: the gateway's HTTP server
    drops one whose response was given up, so the socket and its buffers are not held until the client leaves."""
    engine, url = start_fake(stream_events=5000, event_padding=16 * 1024)
    settings = load_settings(engine_urls=[url], health_interval_s=0.2, client_write_timeout_s=1.0)
    port = free_port()
    config = uvicorn_config(create_app(settings), settings, "127.0.0.1", port, log_level="critical")
    gw = stack.enter_context(serve(None, config=config))
    client = RawClient(gw)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    data = json.dumps(chat_body(M, stream=True)).encode()
    client.start("/v1/chat/completions", len(data), data)
    local_port = client.sock.getsockname()[1]

    def server_side_open() -> bool:
        return any(
            c.laddr and c.laddr.port == port and c.raddr and c.raddr.port == local_port
            for c in psutil.Process().net_connections("tcp")
        )

    wait_until(lambda: engine.aborts == ["streaming"], timeout_s=20)
    wait_until(lambda: not server_side_open(), timeout_s=10)
    client.close()


# ------------------------------------------------------------------ model names


def test_a_megabyte_model_name_is_not_echoed(start_fake, start_gateway) -> None:
    _, url = start_fake()
    gw = start_gateway([url])
    wait_until(lambda: metric(gw, f'alm_gateway_engine_healthy{{engine="{url[7:]}"}}') == 1)
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body("m" * 2**20), timeout=30)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    assert len(resp.text) < 300, len(resp.text)


def test_with_no_engine_known_an_unknown_model_is_still_a_503(start_gateway) -> None:
    gw = start_gateway(["http://127.0.0.1:9"])  # nothing listens: no engine's models are known
    resp = httpx.post(gw + "/v1/chat/completions", json=chat_body("m" * 2**20), timeout=30)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_healthy_engine"
    assert len(resp.text) < 300, len(resp.text)


@pytest.mark.parametrize("route", ["chat_small", "chat_big", "transcription"])
def test_an_unknown_models_audio_is_never_decoded(
    start_fake, start_gateway, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    decoded: list[str] = []
    real = server.ingest.prepare.decode_audio

    def counting(*args, **kwargs):
        decoded.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(server.ingest.prepare, "decode_audio", counting)
    _, url = start_fake()
    gw = start_gateway([url])
    wait_until(lambda: metric(gw, f'alm_gateway_engine_healthy{{engine="{url[7:]}"}}') == 1)
    seconds = 0.2 if route == "chat_small" else 30.0  # under / over the 32 KiB parsed on the event loop

    def send(model: str) -> httpx.Response:
        if route == "transcription":
            wav = encode(tone(seconds), 16_000, "wav")
            return httpx.post(
                gw + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": model}, timeout=30
            )
        return httpx.post(gw + "/v1/chat/completions", json=chat_body(model, audio_part(seconds=seconds)), timeout=30)

    resp = send("nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    assert decoded == []
    assert send(M).status_code == 200 and len(decoded) == 1  # a served model's clip is decoded as before


# ------------------------------------------------------------------ /ready and /metrics


@pytest.mark.parametrize(
    ("settings", "protected"),
    [({"api_keys": ["k"]}, True), ({"api_keys": ["k"], "protect_details": False}, False), ({}, False)],
    ids=["keys", "keys_unprotected", "no_keys"],
)
def test_details_need_a_key_when_protected(start_fake, start_gateway, settings: dict, protected: bool) -> None:
    _, url = start_fake()
    gw = start_gateway([url], **settings)
    key = {"authorization": "Bearer k"}
    wait_until(lambda: httpx.get(gw + "/ready").status_code == 200)
    details = {"status": "ready", "engines": 1, "models": [M]}
    assert httpx.get(gw + "/ready").json() == ({"status": "ready"} if protected else details)
    assert httpx.get(gw + "/ready", headers=key).json() == details
    assert httpx.get(gw + "/ready", headers={"authorization": "Bearer wrong"}).status_code == 200
    anonymous = httpx.get(gw + "/metrics")
    if protected:
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
        assert url[7:] not in anonymous.text
    else:
        assert anonymous.status_code == 200 and url[7:] in anonymous.text
    assert httpx.get(gw + "/metrics", headers=key).status_code == 200
