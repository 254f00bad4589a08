"""Start and stop a real vLLM OpenAI server (with our plugin) for tests, launched by the engine contract."""

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from alm.engine import EngineSettings, engine_launch
from alm.processes import free_port, stop_process, wait_ok

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
    argv: tuple[str, ...] = ()
    """The command line the contract gave it."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 30, group=False)  # started in the test's own process group


def start_engine(
    checkpoint: Path,
    log_path: Path,
    *,
    extra_args: tuple[str, ...] = (),
    served_model: str = SERVED_MODEL,
    shared_audio_dir: Path | None = None,
    cpu_bind: str | None = None,
    **settings: object,
) -> EngineProcess:
    """The engine as ``alm engine`` / ``alm serve`` start it (``alm.engine.engine_launch``), on loopback.
    ``settings``: further ``EngineSettings`` fields; ``cpu_bind``: cores for the model worker (vLLM's automatic
    choice puts every engine on the same one)."""
    port = free_port()
    launch = engine_launch(EngineSettings(
        model_path=str(checkpoint), served_model_name=served_model, engine_host="127.0.0.1", engine_port=port,
        shared_audio_dir=str(shared_audio_dir or ""), engine_args=list(extra_args), **settings,
    ))  # fmt: skip
    env = {**engine_env(), **launch.env}
    if cpu_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(launch.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    engine = EngineProcess(f"http://127.0.0.1:{port}", served_model, proc, log_path, shared_audio_dir, launch.argv)
    if wait_ok(proc, f"{engine.url}/health", ENGINE_START_TIMEOUT_S):
        return engine
    if proc.poll() is not None:
        raise RuntimeError(f"engine exited with {proc.returncode}:\n{engine.log()[-4000:]}")
    engine.stop()
    raise RuntimeError(f"engine not healthy after {ENGINE_START_TIMEOUT_S} s:\n{engine.log()[-4000:]}")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL an engine and every process it started (its API server and engine core): a crash, not a stop."""
    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(family, timeout=30)
