"""Session-wide fixtures: one tiny checkpoint and one real vLLM engine per test session."""

import os
from pathlib import Path

import pytest

from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from tests.engine import EngineProcess, start_engine

# vLLM on CPU sizes its KV cache from this (GiB); the tiny model needs little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-midashenglm"))


@pytest.fixture(scope="session")
def engine_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineProcess:
    """A running vLLM OpenAI server on the tiny checkpoint: `.url`, `.model`, `.proc`, `.log()`,
    `.shared_audio_dir` (files there may be handed to it by URL)."""
    engine = start_engine(
        tiny_checkpoint,
        tmp_path_factory.mktemp("engine") / "engine.log",
        shared_audio_dir=tmp_path_factory.mktemp("shared-audio"),
    )
    yield engine
    engine.stop()
