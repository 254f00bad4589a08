"""Requests refused by their headers alone, before any body byte is read: a Host the gateway does not answer to
(DNS rebinding), a cross-site Origin, a body type other than the route's, a framing other than plain chunked.

Why: a gateway on localhost without keys is reachable from any web page the same machine opens. A page cannot
set Host, so a rebound name (``evil.example`` resolving to 127.0.0.1) shows in it; a form's cross-site POST
carries its Origin; and a page can send ``text/plain`` bodies without a CORS preflight, but not
``application/json``. ``Transfer-Encoding: identity, chunked`` or both Content-Length and Transfer-Encoding are
how requests are smuggled past proxies that read the framing differently.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from server.errors import GatewayError, InvalidRequest

if TYPE_CHECKING:  # its type only: no web framework below the request flow
    from starlette.datastructures import Headers

BODY_TYPES = {
    "chat_completions": "application/json",
    "transcriptions": "multipart/form-data",
}
"""The content type each POST route reads (parameters such as ``charset`` or ``boundary`` may follow)."""
PROBE_PATHS = frozenset({"/health", "/ready"})
"""Answered whatever the Host: orchestrators probe by address, and these say nothing a page could use."""
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class Forbidden(GatewayError):
    status, type, code = 403, "invalid_request_error", "forbidden"


class UnsupportedMediaType(InvalidRequest):
    status, code = 415, "unsupported_media_type"


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, without port or brackets) is this machine's loopback."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """``name:port`` / ``[v6]:port`` → the name or address, lower-cased; '' when malformed."""
    try:
        return (urlsplit(f"//{authority}").hostname or "").lower()
    except ValueError:
        return ""


class HostPolicy:
    """Which Host (and Origin) names a request may carry. ``allowed``: ``ALM_ALLOWED_HOSTS`` (``*`` = any).
    Loopback names (localhost, 127.0.0.1, [::1]) are always allowed. Empty: on a connection that arrived at a
    loopback address only those — a browser is the only client that can be made to send another name there —
    and any name elsewhere (a container or pod is reached by names the gateway cannot know). An Origin of
    ``null`` (sandboxed frames) names no host."""

    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.names = frozenset(name.lower().rstrip(".") for name in allowed if name != "*")

    def allows(self, name: str, local_address: str | None) -> bool:
        if self.any or is_loopback(name):
            return True
        if self.names:
            return name.rstrip(".") in self.names
        return local_address is None or not is_loopback(local_address)


def check_headers(
    headers: Headers, route: str | None, path: str, method: str, local_address: str | None, hosts: HostPolicy
) -> None:
    """Raise the typed error for the first header rule a request breaks."""
    framing = headers.getlist("transfer-encoding")
    if framing and ([value.strip().lower() for value in framing] != ["chunked"] or "content-length" in headers):
        raise InvalidRequest(
            "Transfer-Encoding must be exactly 'chunked', without Content-Length",
            code="invalid_transfer_encoding",
        )
    if path in PROBE_PATHS:
        return
    if not hosts.allows(host_name(headers.get("host", "")), local_address):
        raise Forbidden("the Host header names a host this gateway does not serve (ALM_ALLOWED_HOSTS)", code="bad_host")
    origin = headers.get("origin")
    if origin is not None and not hosts.allows(host_name(urlsplit(origin).netloc), local_address):
        raise Forbidden("requests from this Origin are not accepted (ALM_ALLOWED_HOSTS)", code="bad_origin")
    wanted = BODY_TYPES.get(route or "")
    if wanted is not None and method == "POST":
        given = headers.get("content-type", "").partition(";")[0].strip().lower()
        if given != wanted:
            raise UnsupportedMediaType(f"this endpoint takes Content-Type: {wanted}", code="unsupported_media_type")
