"""Session-wide fixtures: one tiny checkpoint and one real vLLM engine per test session."""

import os
from pathlib import Path

import pytest

from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from tests.support.engine import EngineProcess, start_engine

# vLLM on CPU sizes its KV cache from this (GiB); the tiny model needs little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


ENGINE_FIXTURES = frozenset({"engine_server", "doomed_engine", "family_server"})
"""Fixtures that start a real vLLM engine; modules that start their own say so with ``pytestmark``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `engine`: the test needs a real vLLM engine (~25 s to start); `-m "not engine and not containers"` is the fast
    # loop. Marked from the fixtures a test uses, so a new test on the session engine is marked without saying so.
    for item in items:
        if ENGINE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


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
