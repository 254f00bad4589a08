"""`alm serve` (the `make serve` command): engine + gateway come up through the engine contract and
`alm gateway`, serve the SDK, drain and stop on SIGTERM, leaving no process behind; engines that share a GPU start
one after another (fake children on a faked GPU host)."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import openai
import psutil
import pytest
import soundfile as sf

from alm import placement, stack
from alm.engine import NO_URL_FETCHING, EngineSettings
from alm.processes import Child, free_port


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


@pytest.mark.engine
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


class FakeProc:
    """A child process that is running, or has exited with ``returncode``."""

    def __init__(self, returncode: int | None = None) -> None:
        self.returncode, self.pid = returncode, 0

    def poll(self) -> int | None:
        return self.returncode


@pytest.fixture
def fake_children(clean_env, tmp_path):
    """``run_stack`` on a faked host of ``gpus`` (default one GPU) with fake children: ``events`` records each
    spawn (name, ``CUDA_VISIBLE_DEVICES``) and each health wait (name); names in ``exits`` exit during start with
    1. A ready gateway sends SIGTERM, so the stack stops."""
    gpus = ["0"]
    clean_env.setattr(placement, "cpu_build", lambda: False)
    clean_env.setattr(placement, "gpu_devices", lambda: tuple(gpus))
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    events: list[tuple[str, ...]] = []
    exits: set[str] = set()
    children: dict[str, Child] = {}

    def spawn(name, argv, url, env, log_path, cpus=None) -> Child:
        events.append(("spawn", name, env.get("CUDA_VISIBLE_DEVICES", "")))
        children[url] = Child(name, FakeProc(1 if name in exits else None), url, log_path)  # type: ignore[arg-type]
        return children[url]

    def wait_ok(proc, url, timeout_s, stop) -> bool:
        child = children[url.rsplit("/", 1)[0]]
        events.append(("wait", child.name))
        if child.name == "gateway":
            os.kill(os.getpid(), signal.SIGTERM)
            return True
        return proc.poll() is None

    clean_env.setattr(stack, "spawn", spawn)
    clean_env.setattr(stack, "wait_ok", wait_ok)
    clean_env.setattr(stack, "stop_process", lambda proc, timeout_s: None)
    return SimpleNamespace(gpus=gpus, events=events, exits=exits, children=children, logs=tmp_path / "logs")


def test_engines_that_share_a_gpu_start_one_after_another(fake_children, tmp_path, capsys) -> None:
    assert stack.run_stack(EngineSettings(model_path=str(tmp_path)), free_port(), 3, log_dir=fake_children.logs) == 0
    assert fake_children.events == [
        ("spawn", "engine-0", "0"), ("wait", "engine-0"),
        ("spawn", "engine-1", "0"), ("wait", "engine-1"),  # starts once engine-0 is healthy
        ("spawn", "engine-2", "0"), ("wait", "engine-2"),
        ("spawn", "gateway", ""), ("wait", "gateway"),
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "engine-0 → engine-1 → engine-2" in out
    for i in range(3):
        assert f"engine-{i} ({tmp_path.name}) starting on 127.0.0.1:" in out
        assert f", GPU 0 (log: {fake_children.logs / f'engine-{i}.log'})" in out


def test_engines_on_gpus_of_their_own_start_together(fake_children, tmp_path) -> None:
    fake_children.gpus[:] = ["0", "1"]
    assert stack.run_stack(EngineSettings(model_path=str(tmp_path)), free_port(), 3, log_dir=fake_children.logs) == 0
    assert fake_children.events[:6] == [
        ("spawn", "engine-0", "0"), ("spawn", "engine-1", "1"), ("wait", "engine-0"), ("wait", "engine-1"),
        ("spawn", "engine-2", "0"), ("wait", "engine-2"),  # shares GPU 0 with engine-0
    ]  # fmt: skip


def test_an_engine_that_exits_during_start_stops_the_ones_after_it(fake_children, tmp_path, capsys) -> None:
    fake_children.exits.add("engine-0")
    assert stack.run_stack(EngineSettings(model_path=str(tmp_path)), free_port(), 2, log_dir=fake_children.logs) == 1
    assert fake_children.events == [("spawn", "engine-0", "0"), ("wait", "engine-0")]  # engine-1 never starts
    assert f"engine-0 exited with 1; see {fake_children.logs / 'engine-0.log'}" in capsys.readouterr().err
