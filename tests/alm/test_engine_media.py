"""Engines started by the contract fetch no URL and read no file unless allowed: vLLM's own media restrictions,
the second line of defence behind the gateway's checks (a request sent straight to the engine)."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from alm.engine import NO_URL_FETCHING, EngineSettings, engine_launch
from tests.support.engine import EngineProcess


def wav(seconds: float = 1.0) -> bytes:
    t = np.arange(int(16_000 * seconds)) / 16_000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, format="WAV")
    return buffer.getvalue()


class MediaServer:
    """A local HTTP server that answers every path with a clip; records every path requested."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        clip, paths = wav(), self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(clip)))
                self.end_headers()
                self.wfile.write(clip)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def chat(engine: EngineProcess, audio_url: str) -> httpx.Response:
    body = {
        "model": engine.model,
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "audio_url", "audio_url": {"url": audio_url}},
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ],
    }
    return httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=120)


def test_engine_fetches_no_url_by_default(engine_server, media) -> None:
    assert NO_URL_FETCHING in engine_server.argv  # the session engine is started by the contract
    for host in ("127.0.0.1", "localhost"):
        reply = chat(engine_server, f"http://{host}:{media.port}/clip.wav")
        assert reply.status_code == 400, reply.text
        assert "allowed domains" in reply.json()["error"]["message"]
    assert media.paths == []  # the engine never connected
    assert httpx.get(f"{engine_server.url}/health").status_code == 200


def test_engine_reads_files_only_in_the_shared_directory(engine_server, tmp_path) -> None:
    outside = tmp_path / "clip.wav"
    outside.write_bytes(wav())
    for url in (
        outside.as_uri(),
        f"file://{engine_server.shared_audio_dir}/../{tmp_path.name}/clip.wav",
        "file:///etc/passwd",
    ):
        reply = chat(engine_server, url)
        assert reply.status_code == 400, (url, reply.text)
    inside = Path(engine_server.shared_audio_dir) / "clip.wav"
    inside.write_bytes(wav())
    try:
        assert chat(engine_server, inside.as_uri()).status_code == 200  # the gateway's hand-over still works
    finally:
        inside.unlink()  # the session engine's shared directory: other tests check that nothing is left there


@pytest.mark.parametrize("gateway_urls", [{}, {"ALM_ALLOW_AUDIO_URLS": "true", "ALM_AUDIO_URL_DOMAINS": "localhost"}])
def test_engines_fetch_no_url_whatever_the_gateway_fetches(clean_env, gateway_urls) -> None:
    """The gateway fetches audio URLs itself: an engine allow-list would only serve requests sent past it."""
    for name, value in gateway_urls.items():
        clean_env.setenv(name, value)
    launch = engine_launch(EngineSettings(model_path="/m"), cpu=True)
    argv = list(launch.argv)
    start = argv.index("--allowed-media-domains") + 1
    assert argv[start] == NO_URL_FETCHING and argv[start + 1].startswith("--")  # one value: no domain added
    assert argv.count("--allowed-media-domains") == 1 and "localhost" not in argv
    assert launch.env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"
