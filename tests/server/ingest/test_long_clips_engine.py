"""Every clip up to ``ALM_MAX_AUDIO_SECONDS`` reaches the engine (a real vLLM engine started by the contract).

The gateway forwards a 16 kHz mono float32 WAV (64 KB per second); vLLM's default 25 MB file limit would refuse one
over ~409 s with "Maximum file size exceeded". The contract derives the engine's limit from the longest clip
(alm/engine.py ``forwarded_clip_mib``): the session engine runs at the default 600 s, so clips of exactly 600 s get a
200 whatever their rate, depth and channels, inline or handed over as files, and one byte past the derived limit,
sent straight to the engine, is still refused.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf

from alm.engine import MIB, forwarded_clip_mib
from server.api.app import create_app
from server.config import load_settings
from tests.support.fakes import serve

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

SECONDS = 600.0  # the default ALM_MAX_AUDIO_SECONDS, which the session engine is started with
CLIPS = [  # (rate, subtype, channels, handed over as a file)
    (16_000, "PCM_16", 1, False),  # forwarded as 16-bit PCM, the one case under vLLM's default limit
    (16_000, "PCM_24", 1, True),
    (16_000, "PCM_16", 2, False),
    (16_000, "PCM_24", 2, True),
    (48_000, "PCM_16", 1, True),
    (48_000, "PCM_24", 1, False),
    (48_000, "PCM_16", 2, True),
    (48_000, "PCM_24", 2, False),
]


@pytest.fixture(scope="module")
def gateways(engine_server) -> Iterator[dict[bool, str]]:
    """Two gateways in front of the session engine: clips inline (base64) and as files in its shared directory."""
    common = dict(
        engine_urls=[engine_server.url],
        max_audio_seconds=SECONDS,
        max_audio_bytes=128 * MIB,  # a 600 s 48 kHz 24-bit stereo FLAC is far over the 25 MiB default
        audio_decode_timeout_s=300.0,
        request_timeout_s=600.0,
        health_interval_s=0.5,
    )
    inline = load_settings(**common)
    shared = load_settings(**common, shared_audio_dir=str(engine_server.shared_audio_dir))
    with serve(create_app(inline)) as inline_url, serve(create_app(shared)) as shared_url:
        yield {False: inline_url, True: shared_url}


def flac(rate: int, subtype: str, channels: int) -> bytes:
    """``SECONDS`` of a quiet tone (it compresses well): exactly the limit."""
    t = np.arange(int(SECONDS * rate), dtype=np.float32) / rate
    mono = 0.1 * np.sin(2 * np.pi * 220 * t)
    buffer = io.BytesIO()
    sf.write(buffer, np.repeat(mono[:, None], channels, axis=1), rate, format="FLAC", subtype=subtype)
    return buffer.getvalue()


def chat(model: str, audio: bytes, fmt: str) -> dict:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": fmt}}
    content = [part, {"type": "text", "text": "What is it?"}]
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(("rate", "subtype", "channels", "as_file"), CLIPS)
def test_clips_at_the_limit_reach_the_engine(engine_server, gateways, rate, subtype, channels, as_file) -> None:
    reply = httpx.post(
        f"{gateways[as_file]}/v1/chat/completions",
        json=chat(engine_server.model, flac(rate, subtype, channels), "flac"),
        timeout=600,
    )
    assert reply.status_code == 200, reply.text[:500]
    assert reply.json()["usage"]["prompt_tokens"] > 2900  # 600 s → 3000 audio tokens: the whole clip got there


def test_the_engine_refuses_a_file_past_the_derived_limit(engine_server) -> None:
    """Sent straight to the engine: a float32 WAV one byte over the limit the contract derived from 600 s."""
    limit = forwarded_clip_mib(SECONDS) * MIB
    assert limit > 25 * 1000 * 1000  # over vLLM's default: the derived limit is what let the clips above through
    frames = (limit - 44) // 4 + 1
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 4 * frames, b"WAVE", b"fmt ", 16, 3, 1, 16_000, 64_000, 4, 32,
        b"data", 4 * frames,
    )  # fmt: skip
    wav = header + bytes(4 * frames)
    reply = httpx.post(
        f"{engine_server.url}/v1/chat/completions", json=chat(engine_server.model, wav, "wav"), timeout=600
    )
    assert reply.status_code == 400 and "Maximum file size exceeded" in reply.text, reply.text[:500]
