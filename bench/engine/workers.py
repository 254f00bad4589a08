"""Parent side of the worker processes (engine_worker, hf_worker, micro_worker):
start one, send it JSON commands, read JSON results, watch its memory."""

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from alm.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600


@dataclass
class RssPeak:
    """Peak resident memory of a process tree (the LLM process + its EngineCore), sampled at 20 Hz.

    total: max over samples of the summed RSS (shared library pages counted once per process);
    largest: max RSS of any single process (the EngineCore holds weights, KV cache, activations).
    """

    total: int = 0
    largest: int = 0


@dataclass
class Worker:
    """A `python -m <module> --result-fd N ...` process; its stdout/stderr go to log_path."""

    name: str
    module: str
    args: list[str]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ready: dict = field(default_factory=dict)

    def start(self) -> "Worker":
        return self.launch().wait_ready()

    def launch(self) -> "Worker":
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", self.module, "--result-fd", str(write_fd), *self.args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,), text=True,
            )  # fmt: skip
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        return self

    def wait_ready(self) -> "Worker":
        self.ready = self._read(START_TIMEOUT_S)
        return self

    def _read(self, timeout_s: float) -> dict:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self._results.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not box or not box[0]:
            self.stop()
            raise RuntimeError(f"worker {self.name} died or timed out; log tail:\n{self.log_tail()}")
        return json.loads(box[0])

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def pause(self) -> None:
        """SIGSTOP the whole process tree. An idle vLLM CPU worker still polls (~20 % of a
        core, on the same bound core as every other engine's), so idle engines are paused
        while another system is measured."""
        for p in reversed(self._tree()):
            p.suspend()

    def resume(self) -> None:
        for p in self._tree():
            p.resume()

    def call(self, timeout_s: float = 600, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout_s)

    def call_watching_rss(self, timeout_s: float = 600, **command) -> tuple[dict, RssPeak]:
        peak, done = RssPeak(), threading.Event()

        def sample() -> None:
            root = psutil.Process(self.proc.pid)
            while not done.is_set():
                try:
                    sizes = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
                except psutil.Error:
                    sizes = []
                if sizes:
                    peak.total, peak.largest = max(peak.total, sum(sizes)), max(peak.largest, max(sizes))
                time.sleep(0.05)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            return self.call(timeout_s, **command), peak
        finally:
            done.set()
            watcher.join()

    def rss_now(self) -> RssPeak:
        root = psutil.Process(self.proc.pid)
        sizes = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        return RssPeak(sum(sizes), max(sizes))

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            self.resume()
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            stop_process(self.proc, 30, group=False)


def engine_worker(
    name: str,
    model: Path,
    log_dir: Path,
    *,
    eager: bool,
    max_num_batched_tokens: int | None = None,
    env: dict[str, str] | None = None,
    trust_remote_code: bool = False,
) -> Worker:
    """A vLLM engine; with intree.intree_env() in `env` it runs vLLM's in-tree class."""
    args = ["--model", str(model)]
    if eager:
        args.append("--eager")
    if max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
    if trust_remote_code:
        args.append("--trust-remote-code")
    return Worker(name, "bench.engine.engine_worker", args, log_dir / f"{name}.log", dict(env or {}))
