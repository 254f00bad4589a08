from __future__ import annotations

import time

from fastapi import APIRouter, Request

from server.openapi import ERROR_RESPONSES
from server.schemas import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    """The models served by at least one healthy engine."""
    now = int(time.time())
    return ModelList(data=[ModelCard(id=m, created=now) for m in request.app.state.gateway.pool.served_models()])
