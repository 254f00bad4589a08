"""`alm serve` (the `make serve` command): engine + gateway come up through the engine contract and
`alm gateway`, serve the SDK, drain and stop on SIGTERM, leaving no process behind."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import openai
import psutil
import soundfile as sf

from alm.engine import NO_URL_FETCHING
from alm.processes import free_port


def audio_message() -> list[dict]:
    t = np.arange(44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1) * 0.3
    buffer = io.BytesIO()
    sf.write(buffer, stereo.astype(np.float32), 44_100, format="FLAC")
    data = base64.b64encode(buffer.getvalue()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "flac"}},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]


def test_alm_serve_serves_then_drains(tiny_checkpoint, tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALM_")}
    proc = subprocess.Popen([sys.executable, "-m", "alm", "serve", "--model", str(tiny_checkpoint),
                             "--served-model-name", "tiny", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "XDG_CACHE_HOME": str(tmp_path), "ALM_GRACEFUL_SHUTDOWN_S": "60"})  # fmt: skip
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "alm: serving" in line:
                break
        assert f"at http://127.0.0.1:{port}/v1" in lines[-1], "".join(lines)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # engine API server, its engine core, the gateway
        cmdlines = [c.cmdline() for c in children]
        assert any(NO_URL_FETCHING in cmd and "--hf-overrides" in cmd for cmd in cmdlines)  # the contract's
        assert [sys.executable, "-m", "alm", "gateway", "--host", "127.0.0.1", "--port", str(port)] in cmdlines

        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        msgs = audio_message()
        assert sdk.chat.completions.create(model="tiny", messages=msgs, max_tokens=2).usage.completion_tokens == 2

        # SIGTERM while a request is in flight: it still completes (the gateway drains), then all stops.
        started = threading.Event()
        result: list = []

        def long_request() -> None:
            stream = sdk.chat.completions.create(
                model="tiny", messages=msgs, stream=True, max_tokens=300, extra_body={"ignore_eos": True}
            )
            for i, chunk in enumerate(stream):
                if i == 0:
                    started.set()
                result.append(chunk)

        worker = threading.Thread(target=long_request)
        worker.start()
        started.wait(60)
        proc.send_signal(signal.SIGTERM)
        worker.join(120)
        assert result and result[-1].choices[0].finish_reason == "length"
        assert proc.wait(timeout=120) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
