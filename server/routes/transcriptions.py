from __future__ import annotations

from fastapi import APIRouter, Form, Request, Response, UploadFile

router = APIRouter()


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request,
    file: UploadFile,
    model: str = Form(min_length=1),
    prompt: str | None = Form(None),
    language: str | None = Form(None),
    response_format: str = Form("json"),
    temperature: float | None = Form(None, ge=0, le=2),
) -> Response:
    """OpenAI transcriptions (multipart), answered by the audio-language model through a chat request."""
    raw = await file.read()
    return await request.app.state.gateway.transcribe(raw, model, prompt, language, response_format, temperature,
                                                      request.state.start, request.state.request_id, request.receive)
