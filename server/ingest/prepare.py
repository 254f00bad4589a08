"""Client request → engine request: parse and validate, ingest every audio clip, re-encode for the engine.

``parse_chat`` and ``finish_chat`` are synchronous CPU work (JSON of megabytes, audio decode); routes run them
in the ingest thread pool. Between the two, routes fetch remote audio URLs (async network I/O).
Each audio part is forwarded to the engine once, as a 16 kHz mono WAV (16-bit PCM when the client's audio
already was exactly that, else float32): lossless, and vLLM reads it with one memcpy (libsndfile) and no
resampling.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from server.config import Settings
from server.errors import AudioTooLong, InvalidAudio, InvalidRequest, PayloadTooLarge
from server.families.facts import ModelFacts
from server.guards.fields import AudioPart, audio_parts, check_request_fields, quoted, validation_error
from server.guards.json_tree import check_root, check_value_count, loads
from server.guards.output import check_output_limits, choices, requested_output
from server.guards.structured import check_structured_output
from server.guards.url import vet_audio_url
from server.ingest.audio.clip import (
    FORMATS,
    AudioLimits,
    Clip,
    decode_audio,
    decode_base64,
    decode_data_url,
    encode_wav_base64,
)
from server.ingest.context_budget import ContextBudget, text_tokens_min
from server.ingest.shared_audio import SharedAudioDir
from server.protocol import AudioURLPart, ChatCompletionRequest, InputAudioPart, TranscriptionForm
from server.work import NO_WORK, RequestWork, audio_key

MAX_URL_CHARS = 8192

# A per-process random marker: client text cannot collide with it by accident or design.
_MARK = secrets.token_hex(8)
_SLOT = f"@@alm-audio-{_MARK}-{{}}@@"
_SLOT_RE = re.compile(rf"@@alm-audio-{_MARK}-(\d+)@@".encode())


@dataclass
class AudioRef:
    """One audio content part: where it sits in the request, and its bytes (or a URL still to fetch)."""

    message: int
    part: int
    param: str
    raw: bytes | None = None
    url: str | None = None
    format: str | None = None
    """What the client declared (``input_audio.format``, a data URL's media type, an upload's file name): the
    decoder's hint when the bytes themselves do not say."""


@dataclass
class ChatJob:
    body: dict[str, Any]
    model: str
    stream: bool
    audio: list[AudioRef] = field(default_factory=list)
    clip_seconds: list[float] = field(default_factory=list)
    """Duration of each decoded clip (the samples themselves are not kept once handed on)."""
    ingest_seconds: float = 0.0
    encoded: bytes | None = None
    """The engine request body, once built."""
    files: list[Path] = field(default_factory=list)
    """Clip files in the shared audio dir, to remove once the engine has read them."""
    prompt_param: str = "messages"
    """What a prompt too long for the model's context is blamed on."""
    client_output: bool = True
    """``max_tokens`` is the client's, counted in the context budget (a transcription's is the gateway's own)."""
    work: RequestWork = NO_WORK
    """What it will cost an engine (routing and admission), once ``finish_chat`` has built it."""


def parse_chat(raw_body: bytes, settings: Settings) -> ChatJob:
    """JSON → validated request with every audio part located and its bytes base64-decoded.

    Order matters for cost: the value count is bounded before parsing, the tree is checked before pydantic,
    and the text size (the body less its audio strings) before any base64 is decoded.
    """
    check_value_count(raw_body, settings.max_text_body_bytes)
    body = check_root(loads(raw_body))
    check_request_fields(body)
    check_structured_output(body, settings)  # before any audio is decoded: bounds what an engine compiles
    check_output_limits(body, settings)
    parts = audio_parts(body)
    if len(parts) > settings.max_clips_per_request:
        raise InvalidRequest(
            f"at most {settings.max_clips_per_request} audio clips per request",
            param=parts[settings.max_clips_per_request].where,
            code="too_many_audio_clips",
        )
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None
    text_bytes = len(raw_body) - sum(len(_payload(part.model)) for part in parts)
    if text_bytes > settings.max_text_body_bytes:
        raise PayloadTooLarge(
            f"the request JSON besides its audio data is {text_bytes} bytes; the limit is "
            f"{settings.max_text_body_bytes}",
            code="text_too_large",
        )
    job = ChatJob(body=body, model=req.model, stream=req.stream)
    limits = AudioLimits.of(settings)
    for part in parts:
        job.audio.append(_locate(part, limits, settings))
    return job


def _payload(part: BaseModel) -> str:
    if isinstance(part, InputAudioPart):
        return part.input_audio.data
    return part.audio_url.url if isinstance(part, AudioURLPart) else ""


def _locate(found: AudioPart, limits: AudioLimits, settings: Settings) -> AudioRef:
    i, j, where, part = found.message, found.part, found.where, found.model
    if isinstance(part, InputAudioPart):
        param = f"{where}.input_audio"
        if part.input_audio.format.lower() not in FORMATS:
            raise InvalidAudio(
                f"unsupported audio format {quoted(part.input_audio.format)}; use one of {', '.join(sorted(FORMATS))}",
                param=f"{param}.format",
                code="unsupported_audio_format",
            )
        return AudioRef(
            i,
            j,
            f"{param}.data",
            raw=decode_base64(part.input_audio.data, limits, f"{param}.data"),
            format=part.input_audio.format,
        )
    url, param = _payload(part), f"{where}.audio_url.url"
    if url.startswith("data:"):
        media_type = url[5:].partition(";")[0].partition(",")[0]  # data:audio/flac;base64,... → audio/flac
        return AudioRef(i, j, param, raw=decode_data_url(url, limits, param), format=media_type or None)
    if url.startswith(("http://", "https://")):
        if not settings.allow_audio_urls:
            raise InvalidAudio(
                "http(s) audio URLs are disabled on this gateway; send the audio inline",
                param=param,
                code="audio_url_not_allowed",
            )
        if len(url) > MAX_URL_CHARS:
            raise InvalidAudio(
                f"audio URL is longer than {MAX_URL_CHARS} characters", param=param, code="invalid_audio_url"
            )
        vet_audio_url(url, param, settings.audio_url_domains)  # every URL of the request, before any fetch
        return AudioRef(i, j, param, url=url)
    raise InvalidAudio("audio_url must be a data: URL or an http(s) URL", param=param, code="invalid_audio_url")


def finish_chat(
    job: ChatJob, settings: Settings, shared: SharedAudioDir | None = None, max_model_len: int | None = None
) -> bytes:
    """Decode every clip (raises typed 4xx errors), swap it into the body as a WAV; return the engine JSON.

    With the model's ``max_model_len`` known, the request's tokens are counted against it
    (server/ingest/context_budget.py): text and output before any clip is decoded, then clip by clip, refusing as soon
    as they cannot fit. A clip longer than one audio item of the request's model holds (its facts' ``max_clip_seconds``)
    is refused with 400 ``audio_too_long`` naming that limit, never cut short by the engine's processor.

    Each clip goes to the engine as a file in ``shared`` (a ``file://`` URL) when given and writable, else
    inline as base64.
    Inline, the megabyte-sized base64 strings are spliced into the serialised JSON rather than run through the
    JSON encoder (base64 needs no escaping; the encoder would cost ~3 ms per 10 s of audio).
    """
    start = time.perf_counter()
    facts = settings.facts_for(job.model)
    limits = clip_limits(settings, facts)
    messages = job.body["messages"]
    payloads: list[bytes] = []
    budget = ContextBudget.of(
        job.body, settings, max_model_len, prompt_param=job.prompt_param, client_output=job.client_output, facts=facts
    )
    text_tokens = text_tokens_min(messages, _BYTES_PER_TEXT_TOKEN)  # before clips replace the audio parts
    audio_tokens, key = 0, None
    try:
        for ref in job.audio:
            clip = _decode(ref, limits, settings, job.model)
            ref.raw = None  # the encoded bytes are not needed again: free them before the engine call
            job.clip_seconds.append(clip.seconds)
            audio_tokens += facts.count_audio(len(clip.samples))
            if key is None:
                key = audio_key(clip.samples)
            if budget is not None:
                budget.add_clip(len(clip.samples))
            handed = shared.try_write(clip.samples) if shared is not None else None
            if handed is not None:
                path, url = handed
                job.files.append(path)
                part: dict[str, Any] = {"type": "audio_url", "audio_url": {"url": url}}
            else:
                part = {"type": "input_audio", "input_audio": {"data": _SLOT.format(len(payloads)), "format": "wav"}}
                payloads.append(encode_wav_base64(clip.samples).encode("ascii"))
            messages[ref.message]["content"][ref.part] = part
    except BaseException:
        SharedAudioDir.remove(job.files)
        raise
    out = json.dumps(job.body, ensure_ascii=False, separators=(",", ":")).encode()
    if payloads:
        pieces = _SLOT_RE.split(out)  # [text, index, text, index, ..., text]
        for k in range(1, len(pieces), 2):
            pieces[k] = payloads[int(pieces[k])]
        out = b"".join(pieces)
    output = requested_output(job.body)
    job.work = RequestWork(
        audio_seconds=sum(job.clip_seconds),
        audio_tokens=audio_tokens,
        text_tokens=text_tokens,
        output_tokens=output[1] if output is not None else None,
        choices=choices(job.body),
        affinity_key=key,
    )
    job.ingest_seconds = time.perf_counter() - start
    return out


_BYTES_PER_TEXT_TOKEN = 4
"""For routing's work estimate (not a bound): ~4 bytes of non-space text per token, typical of BPE vocabularies."""


def clip_limits(settings: Settings, facts: ModelFacts) -> AudioLimits:
    """The gateway's audio limits, with the longest clip lowered to the model's window where that is shorter
    (decoding then stops as soon as a clip passes it). The decode budget stays the gateway's, so a clip's
    channels and rate are judged the same for every model."""
    limits = AudioLimits.of(settings)
    window = facts.max_clip_seconds
    if window is None or window >= limits.max_seconds:
        return limits
    return dataclasses.replace(limits, max_seconds=window, max_source_samples=limits.source_sample_budget)


def _decode(ref: AudioRef, limits: AudioLimits, settings: Settings, model: str) -> Clip:
    try:
        return decode_audio(ref.raw or b"", limits, ref.param, ref.format)
    except AudioTooLong as exc:
        if limits.max_seconds >= settings.max_audio_seconds:
            raise
        raise AudioTooLong(
            f"audio is longer than one audio item of model {quoted(model)} can hold: at most "
            f"{limits.max_seconds:g} s per clip ({exc.seconds:.1f} s). Send shorter clips, or split the audio into "
            "consecutive clips of at most that length",
            seconds=exc.seconds,
            param=ref.param,
        ) from None


def transcription_job(raw: bytes, filename: str | None, form: TranscriptionForm, settings: Settings) -> ChatJob:
    """An OpenAI transcription request expressed as a chat request to the engine (the model is an ALM).
    ``filename``: the upload's name, whose extension is the decoder's format hint."""
    model = form.model
    instruction = settings.transcription_prompt or settings.facts_for(model).transcription_prompt
    if form.language:
        instruction += f" The language is {form.language}."
    if form.prompt:
        instruction += f" Context: {form.prompt}"
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "input_audio"}, {"type": "text", "text": instruction}]}],
        "max_tokens": settings.transcription_max_tokens,
    }
    if form.temperature is not None:
        body["temperature"] = form.temperature
    audio = [AudioRef(0, 0, "file", raw=raw, format=filename)]
    return ChatJob(body=body, model=model, stream=False, audio=audio, prompt_param="file", client_output=False)
