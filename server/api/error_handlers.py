"""The one place errors become responses: OpenAI's error shape with the request id in the ``x-request-id``
header. Internals (tracebacks, upstream bodies of 5xx) are logged, never returned.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server.errors import GatewayError

log = logging.getLogger("server")


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
