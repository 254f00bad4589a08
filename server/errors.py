"""Typed gateway errors: each carries its HTTP status, OpenAI error ``type``, ``code`` and ``param``, and renders
OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}`` (server/api/error_handlers.py sends it).
No web framework here: ingest, guards and routing raise these without importing one.
"""

from __future__ import annotations

from typing import Any


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

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class AudioTooLong(InvalidAudio):
    """A clip past a length limit; it carries how long the clip is (as far as it was decoded)."""

    code = "audio_too_long"

    def __init__(self, message: str, *, seconds: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.seconds = seconds


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
