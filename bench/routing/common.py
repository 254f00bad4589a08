"""What the routing benches share: two tiny MiDashengLM engines (one core each), our gateway under a chosen
policy, vllm-router in front of the same engines, clips, and quantiles.

Not CI. vllm-router is the PyPI package (``pip install -e .[bench]``); it runs as its own process.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from alm.processes import free_port, stop_process, wait_ok
from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from server.api.app import create_app
from server.config import load_settings
from tests.support.engine import EngineProcess, start_engine
from tests.support.fakes import serve


@contextlib.contextmanager
def two_engines(work: Path, preset: str = "tiny", max_num_seqs: int = 8) -> Iterator[list[EngineProcess]]:
    """Two engines on the same tiny checkpoint (``preset`` of model_plugins/midashenglm/tiny.py: ``tiny``, or
    ``bench``, whose bigger encoder and decoder make the engines' compute dominate), each model worker bound to
    its own core."""
    checkpoint = work / f"{preset}-midashenglm"
    if not checkpoint.exists():
        make_tiny_checkpoint(checkpoint, preset=preset)
    cores = sorted(os.sched_getaffinity(0))
    engines: list[EngineProcess] = []
    try:
        for i in range(2):
            engines.append(
                start_engine(
                    checkpoint,
                    work / f"engine-{i}.log",
                    cpu_bind=str(cores[i % len(cores)]),
                    max_num_seqs=max_num_seqs,
                    max_model_len=4096,
                )
            )
        yield engines
    finally:
        for engine in engines:
            engine.stop()


@contextlib.contextmanager
def gateway(engines: list[EngineProcess], routing: str, **settings: object) -> Iterator[str]:
    """Our gateway (in this process, uvicorn in a thread) in front of ``engines``; waits until it sees both."""
    config = load_settings(
        engine_urls=[e.url for e in engines], routing=routing, health_interval_s=0.5, request_timeout_s=900, **settings
    )
    with serve(create_app(config)) as url:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            healthy = [
                line
                for line in httpx.get(url + "/metrics").text.splitlines()
                if line.startswith("alm_gateway_engine_healthy{")
            ]
            if len(healthy) == len(engines) and all(line.endswith(" 1.0") for line in healthy):
                break
            time.sleep(0.1)
        yield url


def router_env() -> dict[str, str]:
    """The environment for vllm-router: ``BENCH_VLLM_ROUTER_PATH`` (a ``pip install --target`` directory) on its
    ``PYTHONPATH`` when set, so the package need not be in the serving venv."""
    env = dict(os.environ)
    extra = env.get("BENCH_VLLM_ROUTER_PATH")
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def vllm_router(engines: list[EngineProcess], policy: str, log: Path) -> Iterator[str]:
    """vllm-router (``--policy``) in front of ``engines``, as its own process."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm_router.launch_router",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        policy,
        "--worker-urls",
    ]
    argv += [e.url for e in engines]
    argv += ["--max-payload-size", str(256 * 1024 * 1024), "--request-timeout-secs", "900", "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=router_env())
    try:
        if not wait_ok(proc, f"http://127.0.0.1:{port}/health", 120):
            raise RuntimeError(f"vllm-router did not start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 10, group=False)


def clip_part(seconds: float, seed: int) -> dict:
    """A clip as an OpenAI ``input_audio`` part (WAV, 16 kHz): a tone in noise, distinct per seed, so no clip is
    in an engine's prefix cache unless the bench sends it again on purpose (the tiny model's cost does not
    depend on what the audio sounds like)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    samples = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 16_000, format="WAV", subtype="PCM_16")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values), q)) if values else float("nan")


def engine_counter(engine: EngineProcess, name: str) -> float:
    text = httpx.get(engine.url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
