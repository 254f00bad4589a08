"""Bodies that stall after sending much (issue 17): cut within a window of stalling, and never holding more than
one client's share of the large-body budget, however much they sent first."""

from __future__ import annotations

import select
import time

import httpx
import pytest

from server.config import load_settings
from server.errors import Overloaded
from server.guards import body as bodyguard
from server.guards.body import BodyBudget, BodyPace
from tests.support.audio_synth import audio_part, chat_body
from tests.support.hostile import RawClient

M = "fake-model"
CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(bodyguard.time, "monotonic", clock)
    return clock


def test_a_stalled_body_is_cut_a_window_after_it_stalls_however_much_it_sent(clock: Clock) -> None:
    pace = BodyPace(grace_s=10, window_s=10, min_rate=64 * 1024, max_s=300)
    clock.now += 2.6
    pace.arrived(140_000_000)  # the old rule gave this body 30 s + 140 MB / 64 KiB/s ≈ 36 minutes
    assert pace.deadline() == pytest.approx(clock.now + 10)
    clock.now += 9
    pace.arrived(10)  # a trickle does not push it back
    assert pace.deadline() == pytest.approx(1000 + 2.6 + 10)


def test_grace_then_the_rate_over_the_last_window(clock: Clock) -> None:
    pace = BodyPace(grace_s=10, window_s=4, min_rate=100, max_s=300)
    assert pace.deadline() == 1010  # nothing yet: the grace
    for _ in range(30):  # 100 B/s exactly, in 1 s steps: always on time
        clock.now += 1
        pace.arrived(100)
        assert pace.deadline() > clock.now
    # Without more bytes, the window slides past the 400 newest bytes 4 s after the oldest of them arrived.
    assert pace.deadline() == pytest.approx(clock.now + 1)
    clock.now += 1
    pace.arrived(40)  # 40 B/s: the newest 400 bytes began arriving earlier and earlier
    assert pace.deadline() <= clock.now + 1


def test_no_body_takes_longer_than_the_absolute_deadline(clock: Clock) -> None:
    pace = BodyPace(grace_s=10, window_s=10, min_rate=1, max_s=60)
    for _ in range(100):
        clock.now += 1
        pace.arrived(10_000)
    assert pace.deadline() == 1060


def test_the_budget_holds_a_share_per_client() -> None:
    budget = BodyBudget(limit=300, per_client=150, retry_after_s=1)
    budget.take("a", 150)
    with pytest.raises(Overloaded):
        budget.take("a", 1)
    budget.take("b", 150)
    with pytest.raises(Overloaded):
        budget.take("c", 1)  # the whole budget is held
    budget.give("a", 150)
    budget.take("c", 100)
    assert budget.by_client == {"b": 150, "c": 100} and budget.used == 250


def post_clip(gw: str, key: str | None = None, source: str = "127.0.0.1") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60) as client:
        return client.post(gw + CHAT, json=chat_body(M, audio_part("wav", 30.0)), headers=headers)


def stall(gw: str, size: int, key: str | None = None) -> RawClient:
    """A body of ``size`` declared, all but 1 KB sent at once, then silence with the socket open."""
    client = RawClient(gw)
    headers = {"authorization": f"Bearer {key}"} if key else None
    client.start(CHAT, size, b'{"model": "' + b"a" * (size - 1024), headers=headers)
    return client


def answer_within(client: RawClient, seconds: float) -> int | None:
    """The status the server answered ``client`` with within ``seconds`` (0: it reset the connection), or None."""
    if not select.select([client.sock], [], [], seconds)[0]:
        return None
    try:
        return client.response()[0]
    except (OSError, IndexError, ValueError):
        return 0


def test_two_stalled_140_mb_bodies_starve_no_other_key(start_fake, start_gateway) -> None:
    """The finding: two connections each send ~140 MB (just under the body limit) and go silent. Every request
    with a body over 64 KiB was then refused with 429 for up to 36 minutes."""
    fake, url = start_fake()
    gw = start_gateway([url], api_keys=["sk-attacker", "sk-user"])
    size = load_settings().max_body_bytes - 1000  # the default limits: ~140 MB
    started = time.monotonic()
    hogs = [stall(gw, size, "sk-attacker")]
    try:
        try:
            hogs.append(stall(gw, size, "sk-attacker"))
            refused_while_sending = False
        except OSError:  # the server refused it and closed the connection under the sender
            refused_while_sending = True
        # Whichever body's bytes went over the attacker's share was refused at once (429); the other is held.
        answers = [answer_within(hog, 5) for hog in hogs]
        refused = [a for a in answers if a is not None]
        assert answers.count(None) == 1 and (refused == [] if refused_while_sending else refused[0] in (429, 0))
        held = hogs[answers.index(None)]
        resp = post_clip(gw, "sk-user")  # another key: served at once
        assert resp.status_code == 200, resp.text
        assert post_clip(gw, "sk-attacker").status_code == 429  # the stalled body holds the attacker's share
        assert time.monotonic() - started < 15
        status, body = held.response()  # cut within a window of stalling
        assert status == 408 and body["error"]["code"] == "body_read_timeout"
        assert post_clip(gw, "sk-attacker").status_code == 200
        assert time.monotonic() - started < 40
    finally:
        for hog in hogs:
            hog.close()
    assert len(fake.bodies) == 2


def test_without_keys_the_share_is_per_address(start_fake, start_gateway) -> None:
    fake, url = start_fake()
    limits = {"max_audio_bytes": 2 * 2**20, "max_text_body_bytes": 64 * 1024, "body_read_timeout_s": 3}
    gw = start_gateway([url], body_rate_window_s=3, **limits)
    hog = stall(gw, load_settings(**limits).max_body_bytes - 1000)
    try:
        time.sleep(0.5)
        assert post_clip(gw, source="127.0.0.2").status_code == 200  # another address: served at once
        same = post_clip(gw)  # the same address: its share is held by the stalled body
        assert same.status_code == 429 and same.json()["error"]["code"] == "too_many_large_bodies"
        status, body = hog.response()
        assert status == 408 and body["error"]["code"] == "body_read_timeout"
        assert post_clip(gw).status_code == 200
    finally:
        hog.close()
    assert len(fake.bodies) == 2
