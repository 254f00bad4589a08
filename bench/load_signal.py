"""How much of an engine's load each signal sees (not a CI pass/fail): vLLM's ``/load`` against the scheduler's
``vllm:num_requests_running`` + ``vllm:num_requests_waiting``, sampled side by side under a steady load.

    .venv/bin/python bench/load_signal.py [--clients 8] [--seconds 15] [--audio-seconds 10]

One tiny MiDashengLM engine started by the engine contract (which turns on ``--enable-server-load-tracking``);
``--clients`` threads each send chat requests with a ``--audio-seconds`` tone back to back, so the engine always
has about that many requests in flight. Prints the mean of each signal over the samples: requests in vLLM's API
server (audio loading, processing, detokenising) are in ``/load`` but not in the scheduler's gauges, which is why
the gateway routes by ``/load`` (server/routing/load_reports.py).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from tests.support.engine import start_engine


def tone_wav_base64(seconds: float, rate: int = 16_000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def scheduler_requests(metrics: str) -> float:
    prefixes = ("vllm:num_requests_running{", "vllm:num_requests_waiting{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefixes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--audio-seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="load-signal-"))
    checkpoint = work / "tiny-midashenglm"
    make_tiny_checkpoint(checkpoint)
    engine = start_engine(checkpoint, work / "engine.log", max_model_len=4096)
    audio = {"type": "input_audio", "input_audio": {"data": tone_wav_base64(args.audio_seconds), "format": "wav"}}
    body = {
        "model": engine.model,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [audio, {"type": "text", "text": "What is this?"}]}],
    }
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                http.post(engine.url + "/v1/chat/completions", json=body).raise_for_status()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    in_server: list[int] = []
    scheduler: list[float] = []
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)  # every client has a request in flight
        with httpx.Client(timeout=10) as http:
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                in_server.append(http.get(engine.url + "/load").json()["server_load"])
                scheduler.append(scheduler_requests(http.get(engine.url + "/metrics").text))
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        engine.stop()
    print(f"{args.clients} clients, {args.audio_seconds:g} s audio, {len(in_server)} samples")
    print(f"  /load (requests in the API server)     mean {statistics.fmean(in_server):.1f}")
    print(f"  vllm:num_requests_running + _waiting   mean {statistics.fmean(scheduler):.1f}")


if __name__ == "__main__":
    main()
