"""One pure-ASGI middleware (streaming- and disconnect-safe): request id, the header rules of
``server/guards/headers.py`` (Host, Origin, content type, framing), API-key auth, the body limits of
``server/guards/body.py`` (size, read deadline and pace, bytes held at once in all and per client), and the
per-route request counter and latency histogram.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.deps import gateway_of_scope
from server.api.error_handlers import error_response
from server.config import Settings
from server.errors import GatewayError
from server.guards.auth import check_api_key
from server.guards.body import BodyBudget, BodyPace, GuardedBody
from server.guards.headers import HostPolicy, check_headers
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


def client_of(scope: Scope, key_index: int | None) -> str:
    """Who a request's body bytes are counted against: its API key, else its address (the peer, or the address
    a trusted proxy reports: ``ALM_TRUSTED_PROXIES``)."""
    if key_index is not None:
        return f"key:{key_index}"
    peer = scope.get("client")
    return f"addr:{peer[0]}" if peer else "addr:-"


def body_limit(route: str | None, settings: Settings) -> int:
    if route == "chat_completions":
        return settings.max_body_bytes
    if route == "transcriptions":
        return settings.max_audio_bytes + 2**20  # the file, the form fields and multipart framing
    return settings.max_text_body_bytes


class GatewayMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.budget: BodyBudget | None = None  # created with the first request, from the app's settings
        self.hosts: HostPolicy | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = gateway_of_scope(scope)
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
        body: GuardedBody | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                if body is None or not body.done:  # refused before its body was read: do not parse the rest
                    message["headers"].append((b"connection", b"close"))
                if body is not None:
                    body.release()  # the body has been turned into the engine's answer (or an error)
            await send(message)

        try:
            try:
                if self.hosts is None:
                    self.hosts = HostPolicy(settings.allowed_hosts)
                local = scope.get("server")
                check_headers(request.headers, route, path, scope["method"], local[0] if local else None, self.hosts)
                key = None
                if path.startswith("/v1/"):  # before the body guard: an unauthenticated client sizes nothing
                    key = check_api_key(request.headers.get("authorization"), settings.api_keys)
                body = self._guard(receive, request, body_limit(route, settings), settings, client_of(scope, key))
            except GatewayError as err:
                await error_response(request, err)(scope, receive, send_wrapper)
                return
            await self.app(scope, body.receive, send_wrapper)
        finally:
            if body is not None:
                body.release()
            if route is not None:
                gateway.metrics.requests.labels(route, _code_label(status)).inc()
                gateway.metrics.request_duration.labels(route).observe(time.monotonic() - start)

    def _guard(self, receive: Receive, request: Request, limit: int, settings: Settings, client: str) -> GuardedBody:
        if self.budget is None:
            self.budget = BodyBudget(
                settings.body_bytes_in_flight, settings.body_bytes_per_client, settings.retry_after_s
            )
        declared = request.headers.get("content-length", "")
        pace = BodyPace(
            grace_s=settings.body_read_timeout_s,
            window_s=settings.body_rate_window_s,
            min_rate=settings.body_min_rate_bytes_s,
            max_s=settings.body_max_seconds,
        )
        return GuardedBody(
            receive,
            limit=limit,
            declared=int(declared) if declared.isdigit() else None,
            chunked="transfer-encoding" in request.headers,
            budget=self.budget,
            client=client,
            pace=pace,
        )
