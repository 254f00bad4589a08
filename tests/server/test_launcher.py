"""`alm serve` (server.launcher.run_stack): engine + gateway come up, serve the SDK, drain and stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import openai
import psutil
from audio_synth import audio_part, chat_body

from server import launcher
from server.launcher import free_port


def test_cpu_plan_gives_engines_and_gateway_cores_of_their_own(monkeypatch) -> None:
    """vLLM's automatic binding pins every engine's model worker to the same core and lets everything else land
    on it; alm serve splits the host."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(launcher, "_cpu_build", lambda: True)
    cores = [0, 1]
    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: set(cores))
    assert launcher.cpu_plan(1) == launcher.CpuPlan([[0]], ["0"], [1])  # this machine: engine | gateway
    assert launcher.cpu_plan(2) == launcher.CpuPlan([[0], [1]], ["0", "1"], None)
    assert launcher.cpu_plan(3) == launcher.CpuPlan([None] * 3, [None] * 3, None)  # more engines than cores
    cores[:] = range(8)
    # Two cores or more per engine: one of them stays free of model threads for the engine's front end.
    assert launcher.cpu_plan(2) == launcher.CpuPlan([[0, 1, 2], [3, 4, 5]], ["0,1", "3,4"], [6, 7])
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    assert launcher.cpu_plan(1) == launcher.CpuPlan([None], [None], None)  # the operator's binding wins
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setattr(launcher, "_cpu_build", lambda: False)
    assert launcher.cpu_plan(1).gateway is None  # CUDA build: nothing pinned


def test_run_stack_serves_then_drains(tiny_checkpoint, tmp_path) -> None:
    port = free_port()
    code = (f"import sys; from pathlib import Path; from server.launcher import run_stack; "
            f"sys.exit(run_stack(Path({str(tiny_checkpoint)!r}), {port}, 1, served_model_name='tiny', "
            f"log_dir=Path({str(tmp_path)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "alm: serving" in line:
                break
        assert f"at http://127.0.0.1:{port}/v1" in lines[-1], "".join(lines)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # engine API server, its engine core, the gateway

        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        msgs = chat_body("tiny", audio_part("mp3", 1.0, 44_100, 2))["messages"]
        assert sdk.chat.completions.create(model="tiny", messages=msgs, max_tokens=2).usage.completion_tokens == 2

        # SIGTERM while a request is in flight: it still completes (the gateway drains), then all stops.
        started = threading.Event()
        result: list = []

        def long_request() -> None:
            stream = sdk.chat.completions.create(model="tiny", messages=msgs, stream=True, max_tokens=300,
                                                 extra_body={"ignore_eos": True})
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
