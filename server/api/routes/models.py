from __future__ import annotations

import time

from fastapi import APIRouter

from server.api.deps import GatewayDep
from server.api.openapi import ERROR_RESPONSES
from server.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(gateway: GatewayDep) -> ModelList:
    """The models served by at least one healthy engine."""
    now = int(time.time())
    return ModelList(data=[ModelCard(id=m, created=now) for m in gateway.pool.served_models()])
