from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions with ``input_audio`` / ``audio_url`` parts; streaming and not."""
    body = await request.body()
    return await request.app.state.gateway.chat(body, request.state.start, request.state.request_id, request.receive)
