"""Vetting a client's audio URL before anything is resolved or sent: its parts, and whether an address is public.

Every malformed part is a 400 naming the URL (never a 500 from ``urlsplit``, ``.port`` or the IDNA codec), and
credentials in a URL are refused rather than forwarded in the Host header.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from server.errors import InvalidAudio

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

# IPv6 ranges whose addresses stand for an IPv4 address (checked as that address) or that no public host uses.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: well-known NAT64 prefix, IPv4 in the low 32 bits
_NEVER_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated; some stacks still route ::7f00:1 to 127.0.0.1)
        "64:ff9b:1::/48",  # RFC 8215: local-use NAT64
        "fec0::/10",  # site-local (deprecated, still routed inside some networks)
    )
)


@dataclass(frozen=True)
class AudioTarget:
    scheme: str
    host: str
    """ASCII (IDNA) host name or IP literal, lower case, without brackets."""
    port: int
    path: str
    """Path and query as the client sent them (``/`` when empty)."""
    host_header: str


def parse_audio_url(url: str, param: str) -> AudioTarget:
    def bad(why: str) -> InvalidAudio:
        return InvalidAudio(f"invalid audio URL: {why}", param=param, code="invalid_audio_url")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range", "Port could not be cast"
        raise bad(str(exc).lower()) from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise bad("it must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials (user:password@) are not accepted in audio URLs")
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise bad("the port must be a number from 1 to 65535")
    try:
        host = _ascii_host(parts.hostname)
    except ValueError as exc:
        raise bad(str(exc)) from None
    default = _DEFAULT_PORTS[parts.scheme]
    shown = f"[{host}]" if ":" in host else host
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return AudioTarget(
        parts.scheme, host, port or default, path, shown if port in (None, default) else f"{shown}:{port}"
    )


def domain_allowed(host: str, domains: list[str]) -> bool:
    host = host.rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (d.lower().rstrip(".") for d in domains))


def vet_audio_url(url: str, param: str, domains: list[str]) -> AudioTarget:
    """Everything about a URL that needs no network: its parts and its host against the allowed ``domains``.
    Run on every URL of a request before any is fetched, and again just before fetching."""
    target = parse_audio_url(url, param)
    if not domain_allowed(target.host, domains):
        raise InvalidAudio(
            f"audio URL host '{target.host}' is not in the allowed domains", param=param, code="audio_url_not_allowed"
        )
    return target


def _ascii_host(hostname: str) -> str:
    """The host as sent on the wire (IDNA for non-ASCII names); ValueError saying what is wrong."""
    if "%" in hostname:
        raise ValueError("IPv6 zone identifiers are not accepted")
    if _ip_or_none(hostname) is not None:
        return hostname
    try:
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:  # empty or over-long labels, characters IDNA forbids
        raise ValueError("the host name is not a valid internationalised domain name") from None
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("the host name is not a valid domain name")
    return host


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public(ip: str) -> bool:
    """Whether an address (as ``getaddrinfo`` returns it) is a public unicast one. IPv6 forms that carry an IPv4
    address (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) are judged by that
    address; IPv4-compatible, local-use NAT64 and site-local ones are never public."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if any(addr in net for net in _NEVER_PUBLIC):
            return False
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            addr = embedded
    return addr.is_global and not (
        addr.is_multicast
        or addr.is_private
        or addr.is_reserved
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_unspecified
    )
