"""Child processes: spawn (own session, optional log file and cores), wait for a URL, stop (TERM, then KILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

STOP_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path | None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def spawn(
    name: str, argv: Sequence[str], url: str, env: dict[str, str], log_path: Path | None, cpus: list[int] | None = None
) -> Child:
    """Start ``argv`` in a session of its own (Ctrl-C reaches only the supervisor, which stops children in
    order), pinned to ``cpus`` when given, its output appended to ``log_path`` (else inherited)."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log_path, "ab") if log_path else contextlib.nullcontext() as out:  # the child keeps its own copy
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=pin,
        )
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
