"""Fixtures for gateway tests: fake engines and gateways served on real sockets (threads, same process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fakes import FakeEngine, serve

from server.app import create_app
from server.config import load_settings


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
