"""Typed gateway errors and the one handler that renders OpenAI's error shape.

Every error reaching a client is ``{"error": {"message", "type", "param", "code"}}`` with the request id in
the ``x-request-id`` header. Internals (tracebacks, upstream bodies of 5xx) are logged, never returned.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("server")


class GatewayError(Exception):
    """Base class: one HTTP status, one OpenAI error ``type`` and a machine-readable ``code``."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class PayloadTooLarge(InvalidRequest):
    status, code = 413, "payload_too_large"


class RequestTimeout(InvalidRequest):
    status, code = 408, "request_timeout"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Overloaded(GatewayError):
    status, type, code = 429, "rate_limit_error", "overloaded"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UpstreamError(GatewayError):
    status, type, code = 502, "server_error", "upstream_error"


class NoHealthyEngine(GatewayError):
    status, type, code = 503, "server_error", "no_healthy_engine"


class GatewayTimeout(GatewayError):
    status, type, code = 504, "server_error", "timeout"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def error_response(request: Request, err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("request %s failed: %s %s", request_id(request), exc.status, exc.message)
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = GatewayError(str(exc.detail), code="not_found" if exc.status_code == 404 else "http_error")
        err.status, err.type = exc.status_code, "invalid_request_error"
        return error_response(request, err)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        log.info("request %s: client disconnected; engine request cancelled", request_id(request))
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unexpected error", request_id(request))
        return error_response(request, GatewayError("internal error in the gateway"))
