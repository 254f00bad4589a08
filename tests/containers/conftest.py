"""One container stack per session: images built (layer cache: reruns take seconds), compose project up with
2 engine replicas + 1 gateway + Prometheus on the tiny checkpoint, and `down` in a finalizer even on failure."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from tests.containers.stack import (
    ENGINE_START_TIMEOUT_S,
    IMAGE,
    PodmanService,
    Stack,
    build_images,
    image_size_bytes,
    tool,
    wait_for,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/containers carries the `containers` marker (`-m "not containers"` deselects it).
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.containers)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    if os.geteuid() != 0:
        pytest.fail("tests/containers need root (rootful Podman, debootstrap)", pytrace=False)
    for name in ("podman", "docker-compose", "debootstrap"):
        tool(name)
    directory = tmp_path_factory.mktemp("podman")
    service = PodmanService(directory / "podman.sock", directory / "service.log")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def stack(podman: PodmanService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("containers")
    log = work / "commands.log"
    timings = build_images(log)
    # The checkpoint is made on the host and mounted read-only; the image's user (10001) must be able to read it.
    models = work / "models"
    make_tiny_checkpoint(models / "tiny-midashenglm")
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    stack = Stack(f"almtest{uuid.uuid4().hex[:8]}", podman.docker_host, models, log)
    try:
        start = time.monotonic()
        stack.up(engines=2, gateways=1)
        engines = stack.containers("engine")
        for name in engines:
            wait_for(lambda name=name: stack.engine_ready(name), ENGINE_START_TIMEOUT_S, f"engine {name}")
        (gateway,) = stack.gateway_urls()
        wait_for(lambda: stack.healthy_engines(gateway) == 2, 30, "the gateway to count 2 healthy engines")
        timings["up to ready"] = time.monotonic() - start
        size_gb = image_size_bytes(IMAGE) / 1e9
        report = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        print(f"\ncontainers: {report}; image {size_gb:.2f} GB; commands in {log}", file=sys.stderr)
        yield stack
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        stack.down()
