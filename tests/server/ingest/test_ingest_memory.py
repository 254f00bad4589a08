"""Peak RSS of a real gateway process (uvicorn, ``server.api.app:app_from_env``, default settings) while decompression
bombs and valid clips are ingested at once (issue 8: one 600 s bomb needed 7.4 GB, four killed the process)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from alm.processes import free_port, stop_process, wait_ok
from tests.support.audio_synth import encode, tone
from tests.support.corpus import flac_constant
from tests.support.fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[3]
MAX_RSS = 300 << 20


def chat(raw: bytes, fmt: str) -> dict:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(), "format": fmt}}
    return {
        "model": "fake-model",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": "What is this?"}]}],
    }


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_peak_rss_with_bombs_and_valid_clips(start_fake: Callable[..., tuple[FakeEngine, str]]) -> None:
    engine, engine_url = start_fake()
    bombs = {  # constant-frame FLACs, 6-124 KB each
        "30 s x 8 ch x 384 kHz": (flac_constant(30.0, 8, 384_000), "unsupported_audio_format"),
        "600 s x 8 ch x 384 kHz": (flac_constant(600.0, 8, 384_000), "unsupported_audio_format"),
        "600 s x 8 ch x 192 kHz": (flac_constant(600.0, 8, 192_000), "audio_too_many_samples"),
        "600 s x 8 ch x 192 kHz, length unknown": (
            flac_constant(600.0, 8, 192_000, known_length=False),
            "audio_too_many_samples",
        ),
    }
    valid = [chat(encode(tone(30.0, 44_100, 2), 44_100, "flac"), "flac")] * 4 + [
        chat(encode(tone(30.0, 48_000, 2), 48_000, "mp3"), "mp3")
    ] * 4
    port = free_port()
    env = {**os.environ, "ALM_ENGINE_URLS": engine_url, "ALM_LOG_LEVEL": "WARNING", "ALM_SHARED_AUDIO_DIR": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "server.api.app:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_ok(proc, base + "/ready", 60), "gateway did not start"
        idle = peak_rss(proc.pid)

        def post(body: dict) -> httpx.Response:
            return httpx.post(base + "/v1/chat/completions", json=body, timeout=120)

        with ThreadPoolExecutor(12) as pool:
            bomb_answers = [pool.submit(post, chat(raw, "flac")) for raw, _ in bombs.values()]
            valid_answers = [pool.submit(post, body) for body in valid]
            for (name, (_, code)), answer in zip(bombs.items(), bomb_answers, strict=True):
                response = answer.result()
                assert response.status_code == 400, (name, response.text)
                assert response.json()["error"]["code"] == code, name
                assert response.json()["error"]["param"] == "messages[0].content[0].input_audio.data"
            for answer in valid_answers:
                assert answer.result().status_code == 200, answer.result().text
        peak = peak_rss(proc.pid)
        print(f"gateway VmHWM: idle {idle >> 20} MiB, peak {peak >> 20} MiB")
        assert peak < MAX_RSS, f"gateway peak RSS {peak >> 20} MiB (idle {idle >> 20} MiB)"
        assert len(engine.bodies) == len(valid)  # no bomb reached the engine
    finally:
        stop_process(proc)
