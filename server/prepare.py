"""Client request → engine request: parse and validate, ingest every audio clip, re-encode for the engine.

``parse_chat`` and ``finish_chat`` are synchronous CPU work (JSON of megabytes, audio decode); routes run them
in the ingest thread pool. Between the two, routes fetch remote audio URLs (async network I/O).
Each audio part is forwarded to the engine once, as a 16 kHz mono WAV (16-bit PCM when the client's audio
already was exactly that, else float32): lossless, and vLLM reads it with one memcpy (libsndfile) and no
resampling.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from server.audio import FORMATS, AudioLimits, Clip, decode_audio, decode_base64, decode_data_url, encode_wav_base64
from server.config import Settings
from server.errors import InvalidAudio, InvalidRequest
from server.schemas import AUDIO_PART_TYPES, ChatCompletionRequest
from server.shared_audio import SharedAudioDir

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


@dataclass
class ChatJob:
    body: dict
    model: str
    stream: bool
    audio: list[AudioRef] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    ingest_seconds: float = 0.0
    encoded: bytes | None = None
    """The engine request body, once built."""
    files: list[Path] = field(default_factory=list)
    """Clip files in the shared audio dir, to remove once the engine has read them."""


def limits_of(settings: Settings) -> AudioLimits:
    return AudioLimits(settings.max_audio_bytes, settings.max_audio_seconds, settings.min_audio_seconds)


def validation_param(exc: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    first = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    param = (prefix + loc).lstrip(".") or None
    return param, f"{first['msg']} ({param})" if param else first["msg"]


def parse_chat(raw_body: bytes, settings: Settings) -> ChatJob:
    """JSON → validated request with every audio part located and its bytes base64-decoded."""
    try:
        body = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        param, msg = validation_param(exc)
        raise InvalidRequest(msg, param=param) from None
    job = ChatJob(body=body, model=req.model, stream=req.stream)
    limits = limits_of(settings)
    for i, msg in enumerate(req.messages):
        if not isinstance(msg.content, list):
            continue
        for j, part in enumerate(msg.content):
            kind = part.get("type")
            if kind not in AUDIO_PART_TYPES:
                continue
            where = f"messages[{i}].content[{j}]"
            if len(job.audio) >= settings.max_clips_per_request:
                raise InvalidRequest(f"at most {settings.max_clips_per_request} audio clips per request",
                                     param=where, code="too_many_audio_clips")
            try:
                parsed = AUDIO_PART_TYPES[kind].model_validate(part)
            except ValidationError as exc:
                param, text = validation_param(exc, where)
                raise InvalidRequest(text, param=param) from None
            job.audio.append(_locate(parsed, i, j, where, limits, settings))
    return job


def _locate(part, i: int, j: int, where: str, limits: AudioLimits, settings: Settings) -> AudioRef:
    if part.type == "input_audio":
        param = f"{where}.input_audio"
        if part.input_audio.format.lower() not in FORMATS:
            raise InvalidAudio(f"unsupported audio format '{part.input_audio.format}'; use one of "
                               f"{', '.join(sorted(FORMATS))}", param=f"{param}.format",
                               code="unsupported_audio_format")
        return AudioRef(i, j, f"{param}.data", raw=decode_base64(part.input_audio.data, limits, f"{param}.data"))
    url, param = part.audio_url.url, f"{where}.audio_url.url"
    if url.startswith("data:"):
        return AudioRef(i, j, param, raw=decode_data_url(url, limits, param))
    if url.startswith(("http://", "https://")):
        if not settings.allow_audio_urls:
            raise InvalidAudio("http(s) audio URLs are disabled on this gateway; send the audio inline",
                               param=param, code="audio_url_not_allowed")
        return AudioRef(i, j, param, url=url)
    raise InvalidAudio("audio_url must be a data: URL or an http(s) URL", param=param, code="invalid_audio_url")


def finish_chat(job: ChatJob, settings: Settings, shared: SharedAudioDir | None = None) -> bytes:
    """Decode every clip (raises typed 4xx errors), swap it into the body as a WAV; return the engine JSON.

    Each clip goes to the engine as a file in ``shared`` (a ``file://`` URL) when given and writable, else
    inline as base64.
    Inline, the megabyte-sized base64 strings are spliced into the serialised JSON rather than run through the
    JSON encoder (base64 needs no escaping; the encoder would cost ~3 ms per 10 s of audio).
    """
    start = time.perf_counter()
    limits = limits_of(settings)
    messages = job.body["messages"]
    payloads: list[bytes] = []
    try:
        for ref in job.audio:
            clip = decode_audio(ref.raw or b"", limits, ref.param)
            job.clips.append(clip)
            handed = shared.try_write(clip.samples) if shared is not None else None
            if handed is not None:
                path, url = handed
                job.files.append(path)
                part: dict = {"type": "audio_url", "audio_url": {"url": url}}
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
    job.ingest_seconds = time.perf_counter() - start
    return out


def transcription_job(raw: bytes, model: str, prompt: str | None, language: str | None,
                      temperature: float | None, settings: Settings) -> ChatJob:
    """An OpenAI transcription request expressed as a chat request to the engine (the model is an ALM)."""
    instruction = settings.transcription_prompt
    if language:
        instruction += f" The language is {language}."
    if prompt:
        instruction += f" Context: {prompt}"
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "input_audio"}, {"type": "text", "text": instruction}]}],
        "max_tokens": settings.transcription_max_tokens,
    }
    if temperature is not None:
        body["temperature"] = temperature
    return ChatJob(body=body, model=model, stream=False, audio=[AudioRef(0, 0, "file", raw=raw)])
