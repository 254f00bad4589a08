"""Shared by the per-family tests: seeded clips, chat requests through the openai SDK, one engine per module
started by the engine contract (plus ``alm.families``' environment), and transformers' answers for comparison."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import soundfile as sf

from alm.families import engine_env
from tests.support.engine import EngineProcess, start_engine

RATE = 16000
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"repetition_penalty": 1.0, "return_token_ids": True}}
"""Greedy, and the checkpoint's generation_config.json defaults (which vLLM applies) neutralised: the same
sampling transformers' ``generate(do_sample=False, repetition_penalty=1.0)`` does."""
REPO = Path(__file__).resolve().parents[2]


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.1, int(RATE * seconds)).astype(np.float32)


def wav_b64(clip: np.ndarray) -> str:
    """16-bit PCM WAV: what the gateway forwards; transformers is given the same quantised samples."""
    buf = io.BytesIO()
    sf.write(buf, clip, RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def pcm16(clip: np.ndarray) -> np.ndarray:
    """The samples as the engine decodes them from ``wav_b64``."""
    return sf.read(io.BytesIO(base64.b64decode(wav_b64(clip))), dtype="float32")[0]


def flac_b64(clip: np.ndarray) -> str:
    """16-bit FLAC: long clips stay small on the wire (silence compresses to almost nothing)."""
    buf = io.BytesIO()
    sf.write(buf, clip, RATE, format="FLAC", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def audio_part(clip: np.ndarray, fmt: str = "wav") -> dict[str, Any]:
    encode = {"wav": wav_b64, "flac": flac_b64}[fmt]
    return {"type": "input_audio", "input_audio": {"data": encode(clip), "format": fmt}}


def user(clip: np.ndarray | None, text: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [audio_part(clip)] if clip is not None else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def as_transformers(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation in transformers' content parts (audio → ``{"type": "audio"}``)."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "audio", "audio_url": "clip"} if p["type"] == "input_audio" else p for p in content]
        out.append({**message, "content": content})
    return out


def chat(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, **{**GREEDY, **kwargs})  # type: ignore[arg-type]  # plain dicts


def engine_tokens(engine: EngineProcess) -> tuple[float, float]:
    """The engine's prompt and generated tokens so far (its ``/metrics`` counters, every label summed)."""
    lines = httpx.get(f"{engine.url}/metrics", timeout=10).text.splitlines()
    return tuple(  # type: ignore[return-value]  # two names → two sums
        sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))
        for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
    )


@contextmanager
def family_engine(checkpoint: Path, log_path: Path, shared_audio_dir: Path | None = None) -> Iterator[EngineProcess]:
    """The engine on ``checkpoint`` with what its family needs (alm.families.engine_env: the Omni extras);
    ``shared_audio_dir``: where a same-host gateway may hand it clips as files."""
    extra = engine_env(checkpoint, cpu=True)
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        engine = start_engine(checkpoint, log_path, served_model=checkpoint.name, shared_audio_dir=shared_audio_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield engine
    finally:
        engine.stop()


def transformers_answers(checkpoint: Path, cases: list[tuple[list[dict[str, Any]], list[np.ndarray]]],
                         max_new_tokens: int = 8) -> list[dict[str, list[int]]]:  # fmt: skip
    """``tests.families.reference`` in a child process with the family's engine environment."""
    request = {
        "checkpoint": str(checkpoint), "max_new_tokens": max_new_tokens,
        "cases": [{"messages": as_transformers(m), "clips": [pcm16(c).tolist() for c in clips]} for m, clips in cases],
    }  # fmt: skip
    env = {**os.environ, **engine_env(checkpoint, cpu=True)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "tests.families.reference"], input=json.dumps(request),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"transformers reference failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
