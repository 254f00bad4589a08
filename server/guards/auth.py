"""API keys: a request under ``/v1`` (and, with ``ALM_PROTECT_DETAILS``, ``/metrics`` and ``/ready``'s details)
carries one of the configured Bearer keys, compared in constant time."""

from __future__ import annotations

import hmac

from server.errors import Unauthorized


def check_api_key(authorization: str | None, keys: list[str]) -> int | None:
    """Constant-time comparison against every configured key (no early exit); the matching key's index, None
    when auth is off."""
    if not keys:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    match = -1
    for i, key in enumerate(keys):
        if hmac.compare_digest(token.strip().encode(), key.encode()):
            match = i
    if match < 0:
        raise Unauthorized("Incorrect API key provided")
    return match
