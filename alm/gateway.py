"""``alm gateway``: the OpenAI-compatible gateway (``server/``) under uvicorn with the ``ALM_HTTP_*`` limits."""

from __future__ import annotations

import sys

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewayAddress(BaseSettings):
    """Where the gateway listens: ``ALM_GATEWAY_HOST`` (``0.0.0.0`` in a container), ``ALM_GATEWAY_PORT`` else
    ``PORT``. Everything else is the gateway's own settings (``server/config.py``)."""

    model_config = SettingsConfigDict(env_prefix="ALM_GATEWAY_", extra="ignore", frozen=True, populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535, validation_alias=AliasChoices("ALM_GATEWAY_PORT", "PORT"))


def gateway_argv(host: str, port: int) -> list[str]:
    """``alm gateway`` with this interpreter (how ``alm serve`` starts it)."""
    return [sys.executable, "-m", "alm", "gateway", "--host", host, "--port", str(port)]


def run_gateway(address: GatewayAddress) -> int:
    from server.api.http_server import serve_gateway
    from server.config import load_settings

    serve_gateway(load_settings(), address.host, address.port)
    return 0
