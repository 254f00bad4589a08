"""A client that leaves cancels the engine request at every stage (queued, waiting for the first event,
streaming), and SSE framing from engines (LF, CRLF, CR terminators; bounded event size).

Clients here are raw sockets: closing one is exactly "the client left", at a moment the test chooses."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.support.audio_synth import chat_body
from tests.support.waiting import wait_until

M = "fake-model"


def open_request(gw: str, body: dict) -> socket.socket:
    """Send a chat request on a raw socket and return it without reading (close it to leave)."""
    parts = urlsplit(gw)
    sock = socket.create_connection((parts.hostname, parts.port))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data) + data
    )
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(20)
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}: {got!r}")
        got += chunk
    return got


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series}")


def in_flight(gw: str, engine_url: str) -> float:
    return metric(gw, f'alm_gateway_engine_in_flight_requests{{engine="{engine_url[7:]}"}}')


# ------------------------------------------------------------------ cancellation at every stage


@pytest.mark.parametrize("stream", [True, False])
def test_client_leaving_while_queued_never_reaches_the_engine(start_fake, start_gateway, stream: bool) -> None:
    fake, url = start_fake(mode="hang")
    gw = start_gateway([url], max_inflight_per_engine=1, request_timeout_s=120)
    holder = open_request(gw, chat_body(M))  # holds the engine's only slot
    wait_until(lambda: len(fake.bodies) == 1)
    held_from = time.monotonic()
    queued = open_request(gw, chat_body(M, stream=stream))
    wait_until(lambda: metric(gw, "alm_gateway_queue_depth") == 1)
    queued.close()
    # Only cancellation takes a waiter out of the queue here: the one slot is still held.
    wait_until(lambda: metric(gw, "alm_gateway_queue_depth") == 0)
    assert in_flight(gw, url) == 1
    holder.close()
    held_s = time.monotonic() - held_from
    wait_until(lambda: fake.aborts == ["before_headers"])
    wait_until(lambda: in_flight(gw, url) == 0)
    # The slot's seconds are counted (only the holder held one: the queued request never got a slot).
    assert metric(gw, f'alm_gateway_engine_request_seconds_total{{engine="{url[7:]}"}}') >= held_s
    fake.mode = "ok"
    assert httpx.post(gw + "/v1/chat/completions", json=chat_body(M)).status_code == 200
    assert len(fake.bodies) == 2  # the holder and the last request; the queued one never reached the engine
    wait_until(lambda: metric(gw, 'alm_gateway_requests_total{code="499",route="chat_completions"}') == 2)


@pytest.mark.parametrize(
    ("stream", "knobs", "stage"),
    [
        (True, {"mode": "hang"}, "before_headers"),  # the engine has not even answered with headers
        (True, {"stall_after": 0}, "before_first_event"),  # headers sent, first event not yet (prefill)
        (False, {"mode": "hang"}, "before_headers"),
    ],
)
def test_client_leaving_while_waiting_for_the_engine_aborts_it(
    start_fake, start_gateway, stream: bool, knobs: dict, stage: str
) -> None:
    fake, url = start_fake(**knobs)
    gw = start_gateway([url], request_timeout_s=120)  # far beyond the wait below: only the client can end it
    sock = open_request(gw, chat_body(M, stream=stream))
    wait_until(lambda: len(fake.bodies) == 1)
    sock.close()
    wait_until(lambda: fake.aborts == [stage])
    wait_until(lambda: in_flight(gw, url) == 0)
    wait_until(lambda: metric(gw, 'alm_gateway_requests_total{code="499",route="chat_completions"}') == 1)
    assert metric(gw, 'alm_gateway_upstream_errors_total{kind="timeout"}') == 0


@pytest.mark.parametrize("stall_after", [1, None])
def test_client_leaving_mid_stream_aborts_the_engine(start_fake, start_gateway, stall_after: int | None) -> None:
    """Whether the engine is silent (no write would notice the client is gone) or busy streaming."""
    fake, url = start_fake(stall_after=stall_after, stream_events=100_000, event_delay_s=0.01)
    gw = start_gateway([url], request_timeout_s=120)
    sock = open_request(gw, chat_body(M, stream=True))
    assert b"t0 " in read_until(sock, b"t0 ")
    sock.close()
    wait_until(lambda: fake.aborts == ["streaming"])
    wait_until(lambda: in_flight(gw, url) == 0)
    assert fake.completed == 0


# ------------------------------------------------------------------ SSE framing over HTTP


def _event(i: int, eol: bytes) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": M,
        "choices": [{"index": 0, "delta": {"content": f"w{i}"}, "finish_reason": None}],
    }
    return b"event: message" + eol + b"data: " + json.dumps(chunk).encode() + eol + eol


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_events_are_relayed_as_they_arrive_whatever_the_line_ends(start_fake, start_gateway, eol: bytes) -> None:
    # The engine sends two events and falls silent: both must reach the client now, not at the stream's end.
    fake, url = start_fake(mode="raw", raw_chunks=[_event(0, eol), _event(1, eol)], stall_after=2)
    gw = start_gateway([url], request_timeout_s=120)
    expected = _event(0, b"\n") + _event(1, b"\n")
    with httpx.stream(
        "POST", gw + "/v1/chat/completions", json=chat_body(M, stream=True), timeout=httpx.Timeout(60, read=20)
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        got = b""
        for chunk in resp.iter_raw():
            got += chunk
            if len(got) >= len(expected):
                break
    assert got == expected
    wait_until(lambda: fake.aborts == ["streaming"])


def test_the_sdk_reads_a_crlf_framed_stream(start_fake, start_gateway) -> None:
    chunks = [_event(i, b"\r\n") for i in range(3)] + [b"data: [DONE]\r\n\r\n"]
    _, url = start_fake(mode="raw", raw_chunks=chunks)
    sdk = openai.OpenAI(base_url=start_gateway([url]) + "/v1", api_key="x", max_retries=0)
    got = [
        c.choices[0].delta.content
        for c in sdk.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True)
    ]
    assert got == ["w0", "w1", "w2"]


def test_an_endless_event_ends_the_stream_with_an_error_and_the_engine_request(start_fake, start_gateway) -> None:
    flood = b"data: " + b"x" * 65_536  # no terminator, ever: 64 MiB in all unless the gateway hangs up
    fake, url = start_fake(mode="raw", raw_chunks=[_event(0, b"\n")] + [flood] * 1024)
    gw = start_gateway([url], max_sse_event_bytes=256 * 1024)
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match="too large to relay"):
        for chunk in sdk.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["w0"]
    wait_until(lambda: fake.aborts == ["streaming"])  # the gateway hung up long before 64 MiB
    assert metric(gw, 'alm_gateway_upstream_errors_total{kind="event_too_large"}') == 1
    wait_until(lambda: in_flight(gw, url) == 0)
    assert httpx.get(gw + "/ready").status_code == 200  # an oversized answer says nothing about engine health


def test_an_oversized_first_event_is_a_502(start_fake, start_gateway) -> None:
    _, url = start_fake(mode="raw", raw_chunks=[b"data: " + b"y" * 4096 + b"\n\n"])
    resp = httpx.post(
        start_gateway([url], max_sse_event_bytes=1024) + "/v1/chat/completions", json=chat_body(M, stream=True)
    )
    assert resp.status_code == 502
    assert resp.json() == {
        "error": {
            "message": "no engine could complete the request",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }


def test_a_stream_torn_inside_an_event_ends_with_an_error_event(start_fake, start_gateway) -> None:
    _, url = start_fake(mode="raw", raw_chunks=[_event(0, b"\r\n"), b'data: {"half'])
    sdk = openai.OpenAI(base_url=start_gateway([url]) + "/v1", api_key="x", max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in sdk.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["w0"]
