"""Liveness, readiness and metrics.

``/metrics`` and ``/ready``'s details name the engines (``host:port`` labels) and the models served: with
``protect_details`` on (by default, whenever API keys are set) they need a key like ``/v1/``; ``/ready``'s
status (200 or 503) stays open to probes, which carry no key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import GatewayDep
from server.config import Settings
from server.errors import NoHealthyEngine, Unauthorized
from server.guards.auth import check_api_key

router = APIRouter()


def _protected(settings: Settings) -> bool:
    return bool(settings.api_keys) if settings.protect_details is None else settings.protect_details


def _may_see_details(request: Request, settings: Settings) -> bool:
    if not _protected(settings):
        return True
    try:
        check_api_key(request.headers.get("authorization"), settings.api_keys)
    except Unauthorized:
        return False
    return True


@router.get("/health")
async def health() -> dict[str, Any]:
    """The gateway process is alive (says nothing about engines)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """At least one engine is healthy; else 503. The engine count and models only to those who may see them."""
    pool = gateway.pool
    if not pool.ready():
        raise NoHealthyEngine("no healthy engine")
    if not _may_see_details(request, gateway.settings):
        return {"status": "ready"}
    return {"status": "ready", "engines": sum(e.healthy for e in pool.engines.values()), "models": pool.served_models()}


@router.get("/metrics")
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    if _protected(gateway.settings):
        check_api_key(request.headers.get("authorization"), gateway.settings.api_keys)  # 401 without a valid key
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
