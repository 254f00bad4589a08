"""One pure-ASGI middleware (streaming- and disconnect-safe): request id, API-key auth, body size limit,
and the per-route request counter and latency histogram.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import GatewayError, PayloadTooLarge, Unauthorized, error_response
from server.metrics import STATUS_CODES

ROUTE_NAMES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/models": "models",
}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _code_label(status: int) -> str:
    code = str(status)
    return code if code in STATUS_CODES else f"{status // 100}xx"


def check_api_key(authorization: str | None, keys: list[str]) -> None:
    """Constant-time comparison against every configured key (no early exit)."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    match = False
    for key in keys:
        match |= hmac.compare_digest(token.strip().encode(), key.encode())
    if not match:
        raise Unauthorized("Incorrect API key provided")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = scope["app"].state.gateway
        settings = gateway.settings
        start = time.monotonic()
        request = Request(scope)
        client_id = request.headers.get("x-request-id", "")
        rid = client_id if _CLIENT_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})
        scope["state"].update(request_id=rid, start=start)
        path = scope["path"]
        route = ROUTE_NAMES.get(path)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            if path.startswith("/v1/"):
                try:
                    check_api_key(request.headers.get("authorization"), settings.api_keys)
                except GatewayError as err:
                    await error_response(request, err)(scope, receive, send_wrapper)
                    return
            limit = settings.max_body_bytes if route == "chat_completions" else settings.max_audio_bytes + 2**20
            await self.app(scope, _limited(receive, limit, request), send_wrapper)
        finally:
            if route is not None:
                gateway.metrics.requests.labels(route, _code_label(status)).inc()
                gateway.metrics.request_duration.labels(route).observe(time.monotonic() - start)


def _limited(receive: Receive, limit: int, request: Request) -> Receive:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        async def refuse() -> Message:
            raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
        return refuse
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
        return message

    return counted
