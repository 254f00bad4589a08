"""Fetching http(s) audio URLs (only when enabled): domain allow-list, SSRF guard, size and time limits.

The host is resolved once; every address must be public (unless explicitly allowed) and the connection goes
to that checked address (Host header and TLS SNI keep the name), so DNS rebinding cannot redirect it.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

import httpx

from server.config import Settings
from server.errors import InvalidAudio, PayloadTooLarge


def _domain_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d.lower() or host.endswith("." + d.lower()) for d in domains)


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


async def fetch_audio_url(url: str, param: str, settings: Settings, client: httpx.AsyncClient) -> bytes:
    parts = urlsplit(url)
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidAudio("audio URL must be an absolute http(s) URL", param=param, code="invalid_audio_url")
    if not _domain_allowed(host, settings.audio_url_domains):
        raise InvalidAudio(f"audio URL host '{host}' is not in the allowed domains", param=param,
                           code="audio_url_not_allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidAudio(f"cannot resolve audio URL host '{host}'", param=param, code="audio_url_unreachable") \
            from None
    ips = sorted({info[4][0] for info in infos}, key=lambda ip: (":" in ip, ip))  # IPv4 first
    if not settings.audio_url_allow_private and not all(_public(ip) for ip in ips):
        raise InvalidAudio("audio URL resolves to a private, loopback or link-local address", param=param,
                           code="audio_url_not_allowed")
    ip = ips[0]
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    limit = settings.max_audio_bytes
    try:
        async with asyncio.timeout(settings.audio_url_timeout_s):
            async with client.stream("GET", pinned, headers={"host": parts.netloc}, follow_redirects=False,
                                     timeout=settings.audio_url_timeout_s,
                                     extensions={"sni_hostname": host}) as resp:
                if resp.status_code != 200:
                    raise InvalidAudio(f"audio URL answered HTTP {resp.status_code}", param=param,
                                       code="audio_url_unreachable")
                if int(resp.headers.get("content-length") or 0) > limit:
                    raise PayloadTooLarge(f"audio is larger than the {limit} byte limit", param=param,
                                          code="audio_too_large")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"audio is larger than the {limit} byte limit", param=param,
                                              code="audio_too_large")
                    chunks.append(chunk)
    except TimeoutError:
        raise InvalidAudio("fetching the audio URL timed out", param=param, code="audio_url_unreachable") from None
    except httpx.HTTPError:
        raise InvalidAudio("fetching the audio URL failed", param=param, code="audio_url_unreachable") from None
    return b"".join(chunks)
