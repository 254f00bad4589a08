"""Audio affinity against two real vLLM engines: the second turn of a chat about a clip reaches the engine that
served the first, and vLLM's prefix cache proves it (``vllm:prefix_cache_hits_total`` rises there by the whole
KV blocks the clip's audio tokens fill); under least-request the same chat's second turn goes to the other
engine and hits nothing.

vLLM hashes each multimodal item by content into its KV block hashes, and the gateway re-encodes every clip
from its decoded PCM, so the same clip in a later turn yields the same prompt prefix (audio placeholders
included) and the same block hashes.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from server.api.app import create_app
from server.config import load_settings
from tests.support.audio_synth import speechlike
from tests.support.engine import EngineProcess, start_engine
from tests.support.fakes import serve

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

CLIP_SECONDS = 60.0
AUDIO_TOKENS = 300
"""MiDashengLM's tokens for 60 s (5 per second)."""
BLOCK_TOKENS = 128
"""vLLM's KV block on CPU: the prefix cache reuses whole blocks, so a second turn hits at least every block the
clip's tokens fill (two)."""


@pytest.fixture(scope="module")
def second_engine(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    engine = start_engine(tiny_checkpoint, tmp_path_factory.mktemp("affinity-engine") / "engine.log")
    yield engine
    engine.stop()


def wav_part(seed: int) -> dict:
    buf = io.BytesIO()
    sf.write(buf, speechlike(CLIP_SECONDS, seed=seed), 16_000, format="WAV", subtype="PCM_16")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}


def counter(text: str, name: str) -> float:
    """A vLLM counter summed over its label sets."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + "{"))


def engine_counts(engine: EngineProcess) -> tuple[float, float]:
    """(prompt tokens, prefix-cache hit tokens) the engine has counted."""
    text = httpx.get(engine.url + "/metrics", timeout=30).text
    return counter(text, "vllm:prompt_tokens_total"), counter(text, "vllm:prefix_cache_hits_total")


def wait_both_healthy(gateway: str) -> None:
    for _ in range(600):
        lines = [
            ln
            for ln in httpx.get(gateway + "/metrics").text.splitlines()
            if ln.startswith("alm_gateway_engine_healthy{")
        ]
        if len(lines) == 2 and all(ln.endswith(" 1.0") for ln in lines):
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never saw both engines healthy")


def two_turns(gateway: str, model: str, engines: list[EngineProcess], seed: int) -> list[tuple[int, float]]:
    """Two turns of one chat about one clip; per turn, (index of the engine that served it, prefix-cache hit
    tokens there)."""
    first = [{"role": "user", "content": [wav_part(seed), {"type": "text", "text": "What do you hear?"}]}]
    messages, out = first, []
    with httpx.Client(timeout=300) as client:
        for _ in range(2):
            before = [engine_counts(e) for e in engines]
            resp = client.post(
                gateway + "/v1/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": 4, "temperature": 0},
            )
            assert resp.status_code == 200, resp.text
            after = [engine_counts(e) for e in engines]
            served = [i for i in range(2) if after[i][0] > before[i][0]]
            assert len(served) == 1, (before, after)
            out.append((served[0], after[served[0]][1] - before[served[0]][1]))
            reply = {"role": "assistant", "content": resp.json()["choices"][0]["message"]["content"]}
            messages = [*first, reply, {"role": "user", "content": "And then?"}]
    return out


def test_affinity_keeps_a_chat_on_the_engine_whose_prefix_cache_holds_its_clip(engine_server, second_engine) -> None:
    engines = [engine_server, second_engine]
    results = {}
    for seed, routing in ((101, "affinity"), (202, "least-request"), (303, "affinity-least-work")):
        settings = load_settings(engine_urls=[e.url for e in engines], health_interval_s=0.2, routing=routing)
        with serve(create_app(settings)) as gateway:
            wait_both_healthy(gateway)
            results[routing] = two_turns(gateway, engine_server.model, engines, seed)
    for routing in ("affinity", "affinity-least-work"):
        (first, _), (second, hits) = results[routing]
        assert second == first, results
        assert hits >= AUDIO_TOKENS // BLOCK_TOKENS * BLOCK_TOKENS, results  # the clip's blocks came from the cache
    (first, _), (second, hits) = results["least-request"]
    assert second != first and hits == 0, results  # alternated: the other engine has never seen the clip
