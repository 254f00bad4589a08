"""Fixtures for gateway tests: fake engines and gateways served on real sockets (threads, same process)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from server.api.app import create_app
from server.config import load_settings
from tests.support.engine import EngineProcess, kill_tree, start_engine
from tests.support.fakes import FakeEngine, serve


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture
def start_fake(stack: ExitStack) -> Callable[..., tuple[FakeEngine, str]]:
    """start_fake(**knobs) → (FakeEngine, base URL), stopped at test end."""

    def start(**knobs) -> tuple[FakeEngine, str]:
        engine = FakeEngine(**knobs)
        return engine, stack.enter_context(serve(engine.app()))

    return start


@pytest.fixture
def start_gateway(stack: ExitStack) -> Callable[..., str]:
    """start_gateway(engine_urls, **settings) → gateway base URL (fast health checks), stopped at test end."""

    def start(engine_urls: list[str], **overrides) -> str:
        overrides.setdefault("health_interval_s", 0.2)
        settings = load_settings(engine_urls=engine_urls, **overrides)
        return stack.enter_context(serve(create_app(settings)))

    return start


@pytest.fixture(scope="module")
def doomed_engine(tiny_checkpoint, tmp_path_factory) -> Iterator[EngineProcess]:
    """A second real engine per module, for tests that kill it (on the last core: vLLM binds the session engine
    to the first)."""
    last_core = str(max(os.sched_getaffinity(0)))
    engine = start_engine(tiny_checkpoint, tmp_path_factory.mktemp("engine-doomed") / "engine.log", cpu_bind=last_core)
    yield engine
    kill_tree(engine.proc)
