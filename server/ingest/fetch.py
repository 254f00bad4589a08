"""Fetching http(s) audio URLs (only when enabled): domain allow-list, SSRF guard, size and time limits.

The URL is vetted first (``server/guards/url.py``: no credentials, valid host and port, allowed domain; the
request's URLs were all vetted the same way before any was fetched). The host is resolved once;
every address must be public (unless explicitly allowed) and the connection goes to that checked address (Host
header and TLS SNI keep the name), so DNS rebinding cannot redirect it. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

from server.config import Settings
from server.errors import InvalidAudio, PayloadTooLarge
from server.guards.url import AudioTarget, is_public, vet_audio_url


async def _resolve(target: AudioTarget, param: str) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise InvalidAudio(
            f"cannot resolve audio URL host '{target.host}'", param=param, code="audio_url_unreachable"
        ) from None
    return sorted({str(info[4][0]) for info in infos}, key=lambda ip: (":" in ip, ip))  # IPv4 first


async def fetch_audio_url(url: str, param: str, settings: Settings, client: httpx.AsyncClient) -> bytes:
    target = vet_audio_url(url, param, settings.audio_url_domains)
    ips = await _resolve(target, param)
    if not ips or (not settings.audio_url_allow_private and not all(is_public(ip) for ip in ips)):
        raise InvalidAudio(
            "audio URL resolves to a private, loopback, link-local or otherwise non-public address",
            param=param,
            code="audio_url_not_allowed",
        )
    ip = ips[0].split("%")[0]
    netloc = f"[{ip}]:{target.port}" if ":" in ip else f"{ip}:{target.port}"
    try:
        pinned = httpx.URL(f"{target.scheme}://{netloc}{target.path}")
    except httpx.InvalidURL:
        raise InvalidAudio(
            "invalid audio URL: the path cannot be sent", param=param, code="invalid_audio_url"
        ) from None
    limit = settings.max_audio_bytes
    try:
        async with asyncio.timeout(settings.audio_url_timeout_s):
            async with client.stream(
                "GET",
                pinned,
                headers={"host": target.host_header, "accept-encoding": "identity"},
                follow_redirects=False,
                timeout=settings.audio_url_timeout_s,
                extensions={"sni_hostname": target.host},
            ) as resp:
                if resp.status_code != 200:
                    raise InvalidAudio(
                        f"audio URL answered HTTP {resp.status_code}", param=param, code="audio_url_unreachable"
                    )
                encoding = resp.headers.get("content-encoding", "").strip().lower()
                if encoding not in ("", "identity"):  # decompressing is unbounded: 1 MB of gzip can become 1 GB
                    raise InvalidAudio(
                        f"audio URL answered with Content-Encoding {encoding[:32]!r}; serve it uncompressed",
                        param=param,
                        code="audio_url_encoded",
                    )
                declared = resp.headers.get("content-length") or ""
                if declared.isdigit() and int(declared) > limit:
                    raise PayloadTooLarge(
                        f"audio is larger than the {limit} byte limit", param=param, code="audio_too_large"
                    )
                chunks, size = [], 0
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"audio is larger than the {limit} byte limit", param=param, code="audio_too_large"
                        )
                    chunks.append(chunk)
    except TimeoutError:
        raise InvalidAudio("fetching the audio URL timed out", param=param, code="audio_url_unreachable") from None
    except (httpx.HTTPError, httpx.InvalidURL):
        raise InvalidAudio("fetching the audio URL failed", param=param, code="audio_url_unreachable") from None
    return b"".join(chunks)
