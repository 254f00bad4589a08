"""Admission by audio backlog (server/routing/backlog.py): the bound, Retry-After from the measured drain rate, and no
leak in any way a request ends. Unit tests on a scripted clock; the gateway's paths against scriptable fakes."""

from __future__ import annotations

import json
import math
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import generate_latest

from server.config import load_settings
from server.errors import Overloaded
from server.metrics import Metrics
from server.routing.backlog import DRAIN_WINDOW_S, MAX_RETRY_AFTER_S, NO_TICKET, Backlog
from tests.support.audio_synth import audio_part, chat_body, encode, tone
from tests.support.waiting import wait_until

M = "m"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def backlog(bound: float = 10.0, retry_after_s: int = 1) -> tuple[Backlog, Metrics, Clock]:
    metrics, clock = Metrics(), Clock()
    settings = load_settings(max_queued_audio_seconds=bound, retry_after_s=retry_after_s)
    return Backlog(settings, metrics, lambda model: model == M, clock), metrics, clock


def refused(b: Backlog, seconds: float) -> Overloaded:
    with pytest.raises(Overloaded) as info:
        b.admit(M, seconds)
    err = info.value
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "audio_backlog")
    return err


# ------------------------------------------------------------------ unit


def test_beyond_the_bound_retry_after_comes_from_the_measured_drain_rate() -> None:
    b, _, clock = backlog(bound=10)
    first = b.admit(M, 6)
    clock.now = 2.0
    first.answered()  # 6 s of audio drained in 2 s of queued time
    assert b.drain_rate(M) == 3.0 and b.queued(M) == 0
    b.admit(M, 6)
    b.admit(M, 4)  # exactly at the bound: admitted
    assert b.queued(M) == 10
    assert refused(b, 5).headers() == {"Retry-After": "2"}  # 5 s too many / 3 s per s → 1.7 s
    assert refused(b, 10).headers() == {"Retry-After": "4"}  # 10 / 3 → 3.3 s


def test_the_rate_is_an_average_weighted_towards_recent_busy_time() -> None:
    b, _, clock = backlog()
    t = b.admit(M, 6)
    clock.now = 2.0
    t.answered()
    t = b.admit(M, 3)
    clock.now = 5.0
    t.answered()  # 3 s of audio in 3 s: slower now
    decay = math.exp(-3.0 / DRAIN_WINDOW_S)
    assert b.drain_rate(M) == pytest.approx((6 * decay + 3) / (2 * decay + 3))


def test_idle_time_is_not_drain_time() -> None:
    b, _, clock = backlog()
    t = b.admit(M, 4)
    clock.now = 1.0
    t.answered()
    clock.now = 100.0  # nothing queued for 99 s
    t = b.admit(M, 4)
    clock.now = 101.0
    t.answered()
    assert b.drain_rate(M) == pytest.approx(4.0)


def test_before_any_drain_the_default_retry_after_and_clamps_after() -> None:
    b, _, clock = backlog(bound=10, retry_after_s=7)
    slow = b.admit(M, 8)
    assert refused(b, 5).headers() == {"Retry-After": "7"}  # nothing measured: ALM_RETRY_AFTER_S
    clock.now = 1000.0
    slow.answered()  # 8 s of audio in 1000 s
    b.admit(M, 8)
    assert refused(b, 5).headers() == {"Retry-After": str(MAX_RETRY_AFTER_S)}
    b2, _, clock2 = backlog(bound=10)
    fast = b2.admit(M, 8)
    clock2.now = 0.001
    fast.answered()
    b2.admit(M, 8)
    assert refused(b2, 5).headers() == {"Retry-After": "1"}


def test_a_request_larger_than_the_bound_is_admitted_when_nothing_is_queued() -> None:
    b, _, _ = backlog(bound=10)
    big = b.admit(M, 25)  # refusing it could never be cured by retrying
    refused(b, 0.5)
    big.close()
    b.admit(M, 0.5)
    b.admit(M, 9.5)
    refused(b, 0.5)


def test_bound_zero_only_counts() -> None:
    b, metrics, _ = backlog(bound=0)
    for _ in range(3):
        b.admit(M, 1000)
    assert b.queued(M) == 3000
    assert 'alm_gateway_audio_queued_seconds{model="m"} 3000.0' in generate_latest(metrics.registry).decode()


def test_text_only_and_unknown_models_are_not_counted() -> None:
    b, metrics, _ = backlog(bound=1)
    b.admit(M, 5)
    assert b.admit(M, 0.0) is NO_TICKET  # text only: never refused here
    assert b.admit("invented-by-a-client", 5) is NO_TICKET  # the pool answers 404; no labelled series for it
    text = generate_latest(metrics.registry).decode()
    assert "invented" not in text and 'alm_gateway_audio_received_seconds_total{model="m"} 5.0' in text


def test_tickets_leave_queue_and_flight_once_however_they_end() -> None:
    b, metrics, clock = backlog()

    def gauges() -> tuple[float | None, float | None]:
        get = metrics.registry.get_sample_value
        return (
            get("alm_gateway_audio_queued_seconds", {"model": M}),
            get("alm_gateway_audio_in_flight_seconds", {"model": M}),
        )

    a, c = b.admit(M, 2.5), b.admit(M, 1.5)
    assert gauges() == (4.0, 4.0)
    clock.now = 1.0
    a.answered()
    a.answered()
    assert gauges() == (1.5, 4.0)
    c.close()  # failed, refused or the client left before any answer: no drain counted
    c.close()
    c.answered()
    assert gauges() == (0.0, 2.5) and b.drain_rate(M) == 2.5
    a.close()
    a.close()
    assert gauges() == (0.0, 0.0)


# ------------------------------------------------------------------ the gateway with fake engines


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series}")


def queued(gw: str) -> float:
    return metric(gw, f'alm_gateway_audio_queued_seconds{{model="{M}"}}')


def in_flight(gw: str) -> float:
    return metric(gw, f'alm_gateway_audio_in_flight_seconds{{model="{M}"}}')


def open_request(gw: str, body: dict) -> socket.socket:
    """A chat request on a raw socket, left unread (closing it is the client leaving)."""
    parts = urlsplit(gw)
    sock = socket.create_connection((parts.hostname, parts.port))
    data = json.dumps(body).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n"
    sock.sendall(head % len(data) + data)
    return sock


def post(gw: str, body: dict) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body, timeout=60)


def test_a_full_backlog_refuses_audio_but_not_text_and_admits_again_once_drained(
    start_fake, start_gateway, tmp_path
) -> None:
    fake, url = start_fake(model=M, mode="hold")
    gw = start_gateway(
        [url], max_queued_audio_seconds=3.0, retry_after_s=5, request_timeout_s=120, shared_audio_dir=str(tmp_path)
    )
    clip = audio_part("wav", 2.0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, gw, chat_body(M, clip))
        wait_until(lambda: fake.in_progress == 1 and queued(gw) == 2.0)
        r = post(gw, chat_body(M, clip))  # 2 + 2 > 3
        assert r.status_code == 429 and r.headers["retry-after"] == "5"  # nothing drained yet: the default
        assert r.json()["error"]["code"] == "audio_backlog" and r.json()["error"]["type"] == "rate_limit_error"
        assert len(list(tmp_path.iterdir())) == 1  # the refused request's clip file is gone, the held one's not
        text = pool.submit(post, gw, chat_body(M))  # no audio: not the backlog's to refuse
        wait_until(lambda: fake.in_progress == 2)
        fake.release()
        assert first.result().status_code == 200 and text.result().status_code == 200
    assert queued(gw) == 0 and in_flight(gw) == 0 and not list(tmp_path.iterdir())
    rate = metric(gw, f'alm_gateway_audio_drain_rate_seconds_per_second{{model="{M}"}}')
    assert rate > 0
    fake.stall_after = 0  # streams now wait for their first event until the client leaves
    sock = open_request(gw, chat_body(M, clip, stream=True))
    wait_until(lambda: queued(gw) == 2.0)
    r = post(gw, chat_body(M, clip))
    assert r.status_code == 429
    assert r.headers["retry-after"] == str(min(max(math.ceil((2 + 2 - 3) / rate), 1), MAX_RETRY_AFTER_S))
    sock.close()
    wait_until(lambda: queued(gw) == 0 and in_flight(gw) == 0)
    fake.stall_after = None
    assert post(gw, chat_body(M, clip)).status_code == 200
    assert metric(gw, f'alm_gateway_audio_backlog_rejections_total{{model="{M}"}}') == 2
    assert metric(gw, f'alm_gateway_audio_received_seconds_total{{model="{M}"}}') == 10.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_engine_errors_leave_nothing_queued(start_fake, start_gateway, stream: bool) -> None:
    _, url = start_fake(model=M, mode="status", status=500)
    gw = start_gateway([url], max_queued_audio_seconds=3.0)
    assert post(gw, chat_body(M, audio_part("wav", 2.0), stream=stream)).status_code == 502
    assert queued(gw) == 0 and in_flight(gw) == 0
    assert metric(gw, f'alm_gateway_audio_drain_rate_seconds_per_second{{model="{M}"}}') == 0  # not an answer


@pytest.mark.parametrize(
    ("stream", "knobs"),
    [(False, {"mode": "hang"}), (True, {"mode": "hang"}), (True, {"stall_after": 0})],
    ids=["plain", "stream-before-headers", "stream-before-first-event"],
)
def test_a_client_leaving_before_the_answer_leaves_nothing_queued(start_fake, start_gateway, stream, knobs) -> None:
    fake, url = start_fake(model=M, **knobs)
    gw = start_gateway([url], request_timeout_s=120)
    sock = open_request(gw, chat_body(M, audio_part("wav", 2.0), stream=stream))
    wait_until(lambda: len(fake.bodies) == 1)
    assert queued(gw) == 2.0 and in_flight(gw) == 2.0
    sock.close()
    wait_until(lambda: queued(gw) == 0 and in_flight(gw) == 0)


def test_a_stream_leaves_the_queue_at_its_first_event_and_flight_at_its_end(start_fake, start_gateway) -> None:
    fake, url = start_fake(model=M, stall_after=1)
    gw = start_gateway([url], request_timeout_s=120)
    sock = open_request(gw, chat_body(M, audio_part("wav", 2.0), stream=True))
    sock.settimeout(20)
    got = b""
    while b"t0 " not in got:
        got += sock.recv(65536)
    wait_until(lambda: queued(gw) == 0)
    assert in_flight(gw) == 2.0
    assert metric(gw, f'alm_gateway_time_to_first_token_seconds_per_audio_second_count{{model="{M}"}}') == 1
    sock.close()  # mid-stream
    wait_until(lambda: in_flight(gw) == 0 and fake.aborts == ["streaming"])
    fake.stall_after = None
    with httpx.stream("POST", gw + "/v1/chat/completions", json=chat_body(M, audio_part(), stream=True)) as resp:
        assert resp.status_code == 200 and b"[DONE]" in resp.read()
    wait_until(lambda: in_flight(gw) == 0)
    assert metric(gw, f'alm_gateway_time_to_first_token_seconds_per_audio_second_count{{model="{M}"}}') == 2


def test_transcriptions_are_admitted_by_the_same_backlog(start_fake, start_gateway) -> None:
    fake, url = start_fake(model=M, mode="hold")
    gw = start_gateway([url], max_queued_audio_seconds=3.0, request_timeout_s=120)
    wav = encode(tone(2.0), 16_000, "wav")

    def transcribe() -> httpx.Response:
        files = {"file": ("a.wav", wav)}
        return httpx.post(gw + "/v1/audio/transcriptions", files=files, data={"model": M}, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(transcribe)
        wait_until(lambda: fake.in_progress == 1 and queued(gw) == 2.0)
        r = transcribe()
        assert r.status_code == 429 and r.json()["error"]["code"] == "audio_backlog"
        fake.release()
        assert first.result().status_code == 200
    assert queued(gw) == 0 and in_flight(gw) == 0
    assert transcribe().status_code == 200


def test_retry_after_grows_while_nothing_drains() -> None:
    b, _, clock = backlog(bound=10)
    t = b.admit(M, 6)
    clock.now = 2.0
    t.answered()  # 3 s of audio per second
    b.admit(M, 10)
    assert refused(b, 5).headers() == {"Retry-After": "2"}
    clock.now = 5.0  # 3 s without a drain: the engine may be stuck
    decay = math.exp(-3.0 / DRAIN_WINDOW_S)
    assert refused(b, 5).headers() == {"Retry-After": str(math.ceil(5 / (6 * decay / (2 * decay + 3))))}
    clock.now = 100.0
    assert refused(b, 5).headers() == {"Retry-After": str(MAX_RETRY_AFTER_S)}
