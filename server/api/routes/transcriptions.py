from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from server.api.deps import ContextDep, GatewayDep
from server.api.openapi import TRANSCRIPTION_RESPONSES, transcription_openapi
from server.errors import InvalidRequest, PayloadTooLarge
from server.gateway import Upload
from server.guards.fields import validation_error
from server.guards.json_tree import check_tree
from server.protocol import TranscriptionForm

router = APIRouter()

_MAX_FIELDS = 16
_MAX_FIELD_BYTES = 64 * 1024


@router.post(
    "/v1/audio/transcriptions",
    openapi_extra=transcription_openapi(),
    responses=TRANSCRIPTION_RESPONSES,
    response_model=None,
)
async def transcriptions(request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """OpenAI transcriptions (multipart), answered by the audio-language model through a chat request.

    The form is parsed here rather than by FastAPI, whose parser turns every failure (an over-size upload
    included) into "There was an error parsing the body"."""
    settings = gateway.settings
    async with request.form(max_files=1, max_fields=_MAX_FIELDS, max_part_size=_MAX_FIELD_BYTES) as form:
        upload = form.get("file")
        if upload is None:
            raise InvalidRequest("the audio 'file' field is required", param="file", code="missing_file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(
                "'file' must be a file upload (multipart/form-data with a filename)", param="file", code="invalid_file"
            )
        try:
            data = {k: v for k, v in form.items() if k != "file"}
            check_tree(data)  # a form charset (utf-7) can decode to lone surrogates, as JSON escapes can
            fields = TranscriptionForm.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, data) from None
        raw = await upload.read(settings.max_audio_bytes + 1)
        filename = upload.filename
    if len(raw) > settings.max_audio_bytes:
        raise PayloadTooLarge(
            f"audio is larger than the {settings.max_audio_bytes} byte limit", param="file", code="audio_too_large"
        )
    return await gateway.transcribe(Upload(raw, filename), fields, ctx)
