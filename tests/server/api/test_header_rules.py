"""Requests refused by their headers (issue 17): a web page's rebound Host or cross-site Origin, a body type a page
can send without a preflight, smuggling-prone framing. Each is what a browser or a hostile client would send."""

from __future__ import annotations

import httpx
import pytest

from server.guards.headers import HostPolicy
from tests.support.audio_synth import chat_body
from tests.support.hostile import RawClient

M = "fake-model"
CHAT = "/v1/chat/completions"


@pytest.fixture
def gateway(start_fake, start_gateway):
    fake, url = start_fake()
    return fake, start_gateway([url])


def post(gw: str, headers: dict[str, str], **kwargs) -> httpx.Response:
    kwargs.setdefault("json", chat_body(M))
    return httpx.post(gw + CHAT, headers=headers, **kwargs)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "attacker.test.", "10.0.0.1", ""])
def test_a_rebound_host_is_403_on_a_loopback_gateway(gateway, host: str) -> None:
    """DNS rebinding: a page on evil.example resolves its own name to 127.0.0.1; its requests say so in Host."""
    fake, gw = gateway
    resp = post(gw, {"host": host})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "bad_host" and fake.bodies == []
    assert httpx.get(gw + "/health", headers={"host": host}).status_code == 200  # probes are answered


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:1", "127.1.2.3", "[::1]:8080", "LOCALHOST"])
def test_loopback_names_are_served(gateway, host: str) -> None:
    assert post(gateway[1], {"host": host}).status_code == 200


@pytest.mark.parametrize(
    ("origin", "status"),
    [("https://evil.example", 403), ("null", 403), ("http://localhost:3000", 200), ("http://127.0.0.1:8080", 200)],
)
def test_cross_site_origins_are_403(gateway, origin: str, status: int) -> None:
    resp = post(gateway[1], {"origin": origin})
    assert resp.status_code == status
    if status == 403:
        assert resp.json()["error"]["code"] == "bad_origin"


def test_allowed_hosts_name_the_gateway(start_fake, start_gateway) -> None:
    _, url = start_fake()
    gw = start_gateway([url], allowed_hosts=["api.example.com"])
    assert post(gw, {"host": "api.example.com"}).status_code == 200
    assert post(gw, {"host": "API.example.com:443"}).status_code == 200
    assert post(gw, {"host": "localhost"}).status_code == 200  # loopback names always
    assert post(gw, {"host": "other.example.com"}).status_code == 403


def test_host_policy_elsewhere_than_loopback() -> None:
    """A gateway reached on another interface (a container, a pod) answers the names it is reached by."""
    default, star, named = HostPolicy([]), HostPolicy(["*"]), HostPolicy(["api.example.com"])
    assert default.allows("gateway", "10.88.0.5") and not default.allows("gateway", "127.0.0.1")
    assert star.allows("anything", "127.0.0.1")
    assert named.allows("api.example.com", "10.0.0.2") and not named.allows("gateway", "10.0.0.2")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
def test_chat_takes_json_only(gateway, content_type: str) -> None:
    """A page can POST text/plain or a form cross-site without a CORS preflight, but not application/json."""
    fake, gw = gateway
    resp = httpx.post(
        gw + CHAT, content=b'{"model": "fake-model", "messages": []}', headers={"content-type": content_type}
    )
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_media_type" and fake.bodies == []


def test_json_with_a_charset_is_served(gateway) -> None:
    body = httpx.Request("POST", "x", json=chat_body(M)).content
    resp = httpx.post(gateway[1] + CHAT, content=body, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "framing",
    [
        "transfer-encoding: identity, chunked\r\n",
        "transfer-encoding: gzip, chunked\r\n",
    ],
)
def test_framing_other_than_plain_chunked_is_400(gateway, framing: str) -> None:
    """(Content-Length beside chunked, and chunked twice, llhttp refuses itself.)"""
    fake, gw = gateway
    client = RawClient(gw)
    try:
        head = f"POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{framing}\r\n"
        client.sock.sendall(head.encode() + b"5\r\n{}   \r\n0\r\n\r\n")
        status, body = client.response()
    finally:
        client.close()
    assert status == 400 and body["error"]["code"] in ("invalid_transfer_encoding", "invalid_http_request")
    assert fake.bodies == []
