from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.errors import NoHealthyEngine

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """The gateway process is alive (says nothing about engines)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict:
    """At least one engine is healthy; else 503."""
    pool = request.app.state.gateway.pool
    if not pool.ready():
        raise NoHealthyEngine("no healthy engine")
    return {"status": "ready", "engines": sum(e.healthy for e in pool.engines.values()), "models": pool.served_models()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
