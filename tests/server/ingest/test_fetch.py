"""Audio URL vetting (server/guards/url.py) and fetching (server/ingest/fetch.py): malformed URLs are 400s,
credentials never leave the gateway, and every IPv6 form of a private IPv4 address counts as non-public."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from server.config import load_settings
from server.errors import InvalidAudio
from server.guards.url import is_public, parse_audio_url, vet_audio_url
from tests.support.audio_synth import chat_body, encode, tone
from tests.support.fakes import serve

M = "fake-model"


@pytest.mark.parametrize(("ip", "public"), [
    ("8.8.8.8", True), ("2620:fe::fe", True),
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("64:ff9b::7f00:1", False), ("64:ff9b::a00:1", False), ("64:ff9b::a9fe:a9fe", False),  # NAT64 of private
    ("2002:7f00:1::", False), ("2002:c0a8:101::1", False),  # 6to4 of 127.0.0.1, 192.168.1.1
    ("::7f00:1", False), ("::a00:1", False), ("::808:808", False),  # IPv4-compatible: never
    ("64:ff9b:1::808:808", False),  # local-use NAT64
    ("fec0::1", False), ("fed0::1", False),  # site-local
    ("::ffff:127.0.0.1", False), ("::ffff:10.1.2.3", False),
    ("::1", False), ("::", False), ("fe80::1%eth0", False), ("fc00::1", False), ("ff02::1", False),
    ("ff0e::1", False), ("2001:db8::1", False), ("2001::1", False),
    ("127.0.0.1", False), ("10.0.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False), ("255.255.255.255", False),
])  # fmt: skip
def test_address_classification(ip: str, public: bool) -> None:
    assert is_public(ip) is public


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://user:pw@example.com/a.wav", "credentials"),
        ("http://user@example.com/a.wav", "credentials"),
        ("http://:pw@example.com/a.wav", "credentials"),
        ("http://example.com:99999/a.wav", "port"),
        ("http://example.com:abc/a.wav", "port"),
        ("http://example.com:0/a.wav", "port"),
        ("http://example.com:/a.wav", "port"),
        ("http://[::1/a.wav", "ipv6"),
        ("http://[fe80::1%25eth0]/a.wav", "zone"),
        ("http://" + "a" * 64 + ".example.com/a.wav", "domain"),
        ("http://a..b.example.com/a.wav", "domain"),
        ("http://exa mple.com/a.wav", "domain"),
        ("http://a\x00b.example.com/a.wav", "domain"),
        ("http://-a.example.com/a.wav", "domain"),
        ("ftp://example.com/a.wav", "absolute http"),
        ("http:///a.wav", "absolute http"),
    ],
)
def test_malformed_urls_are_400(url: str, why: str) -> None:
    with pytest.raises(InvalidAudio) as info:
        parse_audio_url(url, "p")
    assert info.value.status == 400 and info.value.code == "invalid_audio_url" and info.value.param == "p"
    assert why in info.value.message.lower()


def test_url_parts() -> None:
    idn = parse_audio_url("https://Bücher.Example/a%20b.wav?x=1#frag", "p")
    assert (idn.host, idn.port, idn.path, idn.host_header) == (
        "xn--bcher-kva.example",
        443,
        "/a%20b.wav?x=1",
        "xn--bcher-kva.example",
    )
    v6 = parse_audio_url("http://[2620:fe::fe]:8080", "p")
    assert (v6.host, v6.port, v6.path, v6.host_header) == ("2620:fe::fe", 8080, "/", "[2620:fe::fe]:8080")
    assert parse_audio_url("http://example.com:80/a", "p").host_header == "example.com"


@pytest.fixture
def media(stack) -> tuple[str, list[dict]]:
    """A media server on localhost that records the headers of every request it gets."""
    app, seen = FastAPI(), []
    wav = encode(tone(1.0), 16_000, "wav")

    @app.get("/a.wav")
    async def clip(request: Request) -> Response:
        seen.append(dict(request.headers))
        return Response(wav, media_type="audio/wav")

    return stack.enter_context(serve(app)).replace("127.0.0.1", "localhost"), seen


def audio_url(url: str) -> dict:
    return chat_body(M, {"type": "audio_url", "audio_url": {"url": url}})


def test_host_header_carries_no_credentials(start_fake, start_gateway, media) -> None:
    base, seen = media
    fake, url = start_fake()
    gw = start_gateway([url], allow_audio_urls=True, audio_url_domains=["localhost"], audio_url_allow_private=True)
    assert httpx.post(gw + "/v1/chat/completions", json=audio_url(base + "/a.wav")).status_code == 200
    assert seen[-1]["host"] == base.removeprefix("http://") and "authorization" not in seen[-1]
    leaky = base.replace("http://", "http://user:secret@") + "/a.wav"
    resp = httpx.post(gw + "/v1/chat/completions", json=audio_url(leaky))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_audio_url"
    assert resp.json()["error"]["param"] == "messages[0].content[0].audio_url.url"
    assert len(seen) == 1 and len(fake.bodies) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:99999/a.wav",
        "http://localhost:x/a.wav",
        "http://[::1/a.wav",
        "http://" + "é" * 70 + ".localhost/a.wav",
        "http://xn--.localhost/a.wav",
        "http://a\udcff.localhost/a.wav",
    ],
)
def test_bad_urls_through_the_gateway_are_400(start_fake, start_gateway, url: str) -> None:
    fake, engine = start_fake()
    gw = start_gateway([engine], allow_audio_urls=True, audio_url_domains=["localhost"], audio_url_allow_private=True)
    resp = httpx.post(
        gw + "/v1/chat/completions",
        content=json.dumps(audio_url(url)),  # escapes the surrogate
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].startswith("messages[0].content[0]") and fake.bodies == []


def test_compressed_audio_is_refused_undecoded(start_fake, start_gateway, stack) -> None:
    app, seen = FastAPI(), []
    bomb = gzip.compress(gzip.compress(b"\0" * (64 * 1024 * 1024)))  # ~64 KiB on the wire, 64 MiB decoded

    @app.get("/bomb.wav")
    async def clip(request: Request) -> Response:
        seen.append(dict(request.headers))
        return Response(bomb, media_type="audio/wav", headers={"content-encoding": "gzip"})

    base = stack.enter_context(serve(app)).replace("127.0.0.1", "localhost")
    fake, url = start_fake()
    gw = start_gateway([url], allow_audio_urls=True, audio_url_domains=["localhost"], audio_url_allow_private=True)
    resp = httpx.post(gw + "/v1/chat/completions", json=audio_url(base + "/bomb.wav"))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "audio_url_encoded", resp.text
    assert resp.json()["error"]["param"] == "messages[0].content[0].audio_url.url"
    assert seen[0]["accept-encoding"] == "identity" and fake.bodies == []


def test_every_url_is_vetted_before_any_is_fetched(start_fake, start_gateway, media) -> None:
    base, seen = media
    fake, url = start_fake()
    gw = start_gateway([url], allow_audio_urls=True, audio_url_domains=["localhost"], audio_url_allow_private=True)
    body = chat_body(
        M,
        {"type": "audio_url", "audio_url": {"url": base + "/a.wav"}},
        {"type": "audio_url", "audio_url": {"url": "http://metadata.internal/a.wav"}},
    )
    resp = httpx.post(gw + "/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "audio_url_not_allowed"
    assert resp.json()["error"]["param"] == "messages[0].content[1].audio_url.url"
    assert seen == [] and fake.bodies == []


def test_url_vetting_is_by_domain() -> None:
    assert vet_audio_url("http://a.b.example.com/x", "p", ["example.com"]).host == "a.b.example.com"
    for url in ("http://example.com.evil/x", "http://badexample.com/x", "http://10.0.0.1/x"):
        with pytest.raises(InvalidAudio) as info:
            vet_audio_url(url, "p", ["example.com"])
        assert info.value.code == "audio_url_not_allowed" and info.value.param == "p"


def test_urls_allowed_without_domains_is_refused_at_start_up(monkeypatch) -> None:
    monkeypatch.setenv("ALM_ALLOW_AUDIO_URLS", "true")
    monkeypatch.setenv("ALM_AUDIO_URL_DOMAINS", "")
    with pytest.raises(ValidationError, match="ALM_AUDIO_URL_DOMAINS"):
        load_settings()
    monkeypatch.setenv("ALM_AUDIO_URL_DOMAINS", "media.example.com")
    assert load_settings().audio_url_domains == ["media.example.com"]
