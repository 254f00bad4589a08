"""Thin route handlers: read the request, call the Gateway, return its response."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.deps import ContextDep, GatewayDep
from server.api.openapi import CHAT_RESPONSES, chat_openapi

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=chat_openapi(), responses=CHAT_RESPONSES, response_model=None)
async def chat_completions(request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """OpenAI chat completions with ``input_audio`` / ``audio_url`` parts; streaming and not. The body is read
    raw (size, deadline and amplification limits apply before parsing) and validated in ``server/ingest/prepare.py``."""
    body = await request.body()
    return await gateway.chat(body, ctx)
