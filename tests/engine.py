"""Start and stop a real vLLM OpenAI server (with our plugin) for tests."""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from server.launcher import engine_command, free_port, stop_process, wait_ok

SERVED_MODEL = "tiny-midashenglm"
ENGINE_START_TIMEOUT_S = 420


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


@dataclass
class EngineProcess:
    url: str
    model: str
    proc: subprocess.Popen
    log_path: Path
    shared_audio_dir: Path | None = None
    """Where a same-host gateway may hand this engine clips as files (``--allowed-local-media-path``)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 30, group=False)  # started in the test's own process group


def start_engine(
    checkpoint: Path, log_path: Path, *, extra_args: tuple[str, ...] = (), served_model: str = SERVED_MODEL,
    shared_audio_dir: Path | None = None, cpu_bind: str | None = None,
) -> EngineProcess:
    """`vllm serve` equivalent (the `vllm` console script does not start under vllm-cpu). ``cpu_bind``: cores
    for the model worker (vLLM's automatic choice puts every engine on the same one)."""
    port = free_port()
    # The launcher's command line (`alm serve` runs the same), on loopback.
    command = engine_command(checkpoint, served_model, port, extra_args, shared_audio_dir)
    log = open(log_path, "wb")
    env = engine_env() if cpu_bind is None else {**engine_env(), "VLLM_CPU_OMP_THREADS_BIND": cpu_bind}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    engine = EngineProcess(f"http://127.0.0.1:{port}", served_model, proc, log_path, shared_audio_dir)
    if wait_ok(proc, f"{engine.url}/health", ENGINE_START_TIMEOUT_S):
        return engine
    if proc.poll() is not None:
        raise RuntimeError(f"engine exited with {proc.returncode}:\n{engine.log()[-4000:]}")
    engine.stop()
    raise RuntimeError(f"engine not healthy after {ENGINE_START_TIMEOUT_S} s:\n{engine.log()[-4000:]}")
