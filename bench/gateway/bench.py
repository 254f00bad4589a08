"""Gateway overhead benchmark (prints ratios measured side by side; not a CI pass/fail).

    .venv/bin/python bench/gateway/bench.py [--preset tiny|bench | --model DIR] [--reps 5] [--requests 64]
                                            [--concurrency 8] [--rate 16000] [--skip load,ingest,cpu,isolated]
                                            [--pin] [--inline]

1. Throughput and latency, direct to one engine (A) vs through the gateway (B) in front of it, interleaved
   A, B, A, B…: concurrency 8, a speech-like 10 s FLAC in ``input_audio``, max_tokens 8.
   Also: the gateway's /health latency while it is under that load, and its peak RSS.
2. Ingest speed per core (one thread), base64 → 16 kHz mono float32, for a 30 s 48 kHz mp3: the gateway's
   path vs soundfile + soxr alone vs vLLM's own loader + resampler.
3. Engine API-server CPU per request for a 30 s clip: as the gateway forwards it (a float32 WAV, inline as
   base64 or as a file in the shared directory) vs a 48 kHz mp3 sent directly, each minus a text-only request.
4. The gateway in isolation, in front of an instant fake engine: its CPU per request and added latency
   (sequential), for a text-only request and for the 10 s FLAC.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from alm.engine import EngineSettings, engine_launch  # noqa: E402
from alm.gateway import gateway_argv  # noqa: E402
from alm.paths import cache_dir, make_shared_audio_dir  # noqa: E402
from alm.processes import free_port, stop_process, wait_ok  # noqa: E402
from server.ingest.audio.clip import TARGET_RATE, AudioLimits, decode_audio, decode_base64, encode_wav_base64  # noqa: E402
from server.ingest.shared_audio import SharedAudioDir  # noqa: E402
from tests.support.audio_synth import encode, speechlike  # noqa: E402

MODEL = "bench-model"


def start(cmd: list[str], env: dict, url: str, path: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if wait_ok(proc, url + path, 900):
        return proc
    if proc.poll() is not None:
        sys.exit(f"{' '.join(cmd[:6])} exited; see {log}")
    stop_process(proc)
    sys.exit(f"timeout starting {cmd}")


def body(parts: list[dict], max_tokens: int) -> bytes:
    content = [*parts, {"type": "text", "text": "Describe the audio."}]
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    ).encode()


def audio(raw: bytes, fmt: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(), "format": fmt}}


async def load(url: str, payload: bytes, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Closed loop: ``concurrency`` workers, ``requests`` in all → (requests/s, latencies in s)."""
    latencies: list[float] = []
    todo = iter(range(requests))
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            for _ in todo:
                t = time.perf_counter()
                resp = await client.post(
                    url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
                )
                latencies.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - t0), latencies


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1e3, q))


def throughput_section(engine_url: str, gw_url: str, gw_proc: psutil.Process, args) -> None:
    flac = encode(speechlike(10.0, args.rate), args.rate, "flac")
    payload = body([audio(flac, "flac")], 8)
    for url in (engine_url, gw_url):  # warm-up
        asyncio.run(load(url, payload, 16, args.concurrency))
    peak_rss, health, stop = [gw_proc.memory_info().rss], {"direct": [], "gateway": []}, threading.Event()
    current: list[str | None] = ["direct"]

    def watch() -> None:  # RSS, and /health latency of whichever server is under load
        while not stop.is_set():
            peak_rss.append(gw_proc.memory_info().rss)
            name = current[0]
            if name is None:  # the one-at-a-time runs are timed unperturbed
                time.sleep(0.05)
                continue
            t = time.perf_counter()
            httpx.get((engine_url if name == "direct" else gw_url) + "/health", timeout=30)
            health[name].append(time.perf_counter() - t)
            time.sleep(0.05)

    results: dict[str, list] = {"direct": [], "gateway": []}
    sequential: dict[str, list[float]] = {"direct": [], "gateway": []}
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(args.reps):
        for name, url in (("direct", engine_url), ("gateway", gw_url)):
            current[0] = name
            results[name].append(asyncio.run(load(url, payload, args.requests, args.concurrency)))
            current[0] = None
            sequential[name] += asyncio.run(load(url, payload, 16, 1))[1]
    stop.set()
    watcher.join()
    thr = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    lat = {k: [x for r in v for x in r[1]] for k, v in results.items()}
    print(
        f"\n== 1. throughput: 10 s FLAC at {args.rate} Hz ({len(flac)} B), max_tokens 8, concurrency "
        f"{args.concurrency}, {args.reps} interleaved reps x {args.requests} requests"
    )
    for k in results:
        print(
            f"  {k:8s} {thr[k]:7.2f} req/s   p50 {pct(lat[k], 50):7.1f} ms   p99 {pct(lat[k], 99):7.1f} ms   "
            f"per-rep req/s {[round(r[0], 2) for r in results[k]]}"
        )
    print(f"  throughput gateway / direct = {thr['gateway'] / thr['direct']:.3f}x   (target >= 1.0x)")
    print(
        f"  added p50 = {pct(lat['gateway'], 50) - pct(lat['direct'], 50):+.1f} ms   (target <= 3 ms); "
        f"one request at a time: {pct(sequential['direct'], 50):.1f} -> {pct(sequential['gateway'], 50):.1f} ms, "
        f"added p50 {pct(sequential['gateway'], 50) - pct(sequential['direct'], 50):+.1f} ms"
    )
    for k, xs in health.items():
        print(
            f"  /health of the {k:7s} target while it is under load: p50 {pct(xs, 50):6.1f} ms, "
            f"max {pct(xs, 100):6.1f} ms ({len(xs)} probes)"
        )
    print(f"  gateway peak RSS {max(peak_rss) / 2**20:.0f} MiB")


def timed(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def ingest_section(n: int) -> None:
    import io

    import soundfile as sf
    import soxr
    from vllm.multimodal.audio import resample_audio_pyav
    from vllm.multimodal.media.audio import AudioMediaIO

    limits = AudioLimits(50 << 20, 600, 0.1)
    print("\n== 2. ingest per core (one thread), base64 -> 16 kHz mono float32, 30 s clip")
    for channels in (1, 2):
        raw = encode(np.repeat(speechlike(30.0, 48_000), channels, axis=1), 48_000, "mp3")
        b64 = base64.b64encode(raw).decode()
        samples = decode_audio(raw, limits, "p").samples

        # Loop values bound as defaults: each closure keeps this iteration's clip.
        def ours_path(b64: str = b64) -> None:
            decode_audio(decode_base64(b64, limits, "p"), limits, "p")

        def forward(samples: np.ndarray = samples) -> None:
            encode_wav_base64(samples)

        def sf_soxr(raw: bytes = raw, channels: int = channels) -> None:
            y, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
            soxr.resample(y.mean(axis=1) if channels > 1 else y[:, 0], sr, TARGET_RATE)

        def vllm_path(b64: str = b64) -> None:
            y, sr = AudioMediaIO(audio_backend="soundfile").load_base64("audio/mp3", b64)
            resample_audio_pyav(y, orig_sr=sr, target_sr=TARGET_RATE)

        ours, fwd = timed(ours_path, n), timed(forward, n)

        alone, vl = timed(sf_soxr, n), timed(vllm_path, n)
        print(
            f"  48 kHz mp3 {'mono  ' if channels == 1 else 'stereo'}: gateway {30 / ours:6.0f}x real time "
            f"({ours * 1e3:.1f} ms) | soundfile+soxr alone {30 / alone:6.0f}x | vLLM loader+pyav resample "
            f"{30 / vl:6.0f}x | + forward encoding {fwd * 1e3:.2f} ms  (target >= 900x)"
        )


def engine_cpu_section(engine_url: str, engine_proc: psutil.Process, n: int, shared: Path) -> None:
    clip = speechlike(30.0, 48_000)
    mp3 = encode(clip, 48_000, "mp3")
    limits = AudioLimits(50 << 20, 600, 0.1)
    samples = decode_audio(mp3, limits, "p").samples
    forwarded = {"type": "input_audio", "input_audio": {"data": encode_wav_base64(samples), "format": "wav"}}
    _, file_url = SharedAudioDir(shared, 3600).write(samples)
    payloads = {
        "text only": body([], 1),
        "forwarded WAV inline": body([forwarded], 1),
        "forwarded WAV file": body([{"type": "audio_url", "audio_url": {"url": file_url}}], 1),
        "direct 48k mp3": body([audio(mp3, "mp3")], 1),
    }

    def cpu() -> float:
        t = engine_proc.cpu_times()
        return t.user + t.system

    per: dict[str, float] = {}
    with httpx.Client(timeout=300) as client:
        for payload in payloads.values():  # warm-up
            client.post(
                engine_url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
            ).raise_for_status()
        for name, payload in list(payloads.items()) * 2:  # interleaved, twice
            c0 = cpu()
            for _ in range(n):
                client.post(
                    engine_url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
                ).raise_for_status()
            per.setdefault(name, []).append((cpu() - c0) / n)
    base = min(per["text only"])
    print(f"\n== 3. engine API-server CPU per request, 30 s clip, max_tokens 1 ({2 * n} requests each)")
    for name, values in per.items():
        print(f"  {name:20s} {min(values) * 1e3:7.1f} ms  (audio cost {(min(values) - base) * 1e3:+7.1f} ms)")

    from vllm.multimodal.media.audio import AudioMediaIO

    data = forwarded["input_audio"]["data"]
    wire = json.dumps({"messages": [{"content": [forwarded]}]})
    load = timed(lambda: AudioMediaIO(audio_backend="soundfile").load_base64("audio/wav", data), 20)
    parse = timed(lambda: json.loads(wire), 20)
    print(
        f"  in-process: vLLM loads the forwarded clip in {load * 1e3:.2f} ms + JSON parse {parse * 1e3:.2f} ms "
        f"(target <= 5 ms)"
    )


FAKE_ENGINE = """
import sys
sys.path.insert(0, sys.argv[2])
import uvicorn
from tests.support.fakes import FakeEngine
engine = FakeEngine(model=sys.argv[3])
engine.bodies = type("Discard", (list,), {"append": lambda self, item: None})()
uvicorn.run(engine.app(), port=int(sys.argv[1]), log_level="warning")
"""


def isolation_section(args, env: dict, logs: Path) -> None:
    fport, gport = free_port(), free_port()
    fake_url, gw_url = f"http://127.0.0.1:{fport}", f"http://127.0.0.1:{gport}"
    procs = [
        start(
            [sys.executable, "-c", FAKE_ENGINE, str(fport), str(ROOT / "tests" / "server"), MODEL],
            env,
            fake_url,
            "/health",
            logs / "fake.log",
        )
    ]
    try:
        procs.append(
            start(
                gateway_argv("127.0.0.1", gport),
                {**env, "ALM_ENGINE_URLS": fake_url, "ALM_LOG_LEVEL": "WARNING"},
                gw_url,
                "/ready",
                logs / "gateway-isolated.log",
            )
        )
        gw = psutil.Process(procs[1].pid)
        print("\n== 4. gateway in isolation (instant fake engine), sequential requests")
        flac = encode(speechlike(10.0, args.rate), args.rate, "flac")
        cases = (("text only", body([], 8)), (f"10 s FLAC {args.rate} Hz", body([audio(flac, "flac")], 8)))
        for name, payload in cases:
            lat: dict[str, list[float]] = {"direct": [], "gateway": []}
            cpu = []
            for _ in range(args.reps):
                for target, url in (("direct", fake_url), ("gateway", gw_url)):
                    t = gw.cpu_times()
                    lat[target] += asyncio.run(load(url, payload, 100, 1))[1]
                    if target == "gateway":
                        u = gw.cpu_times()
                        cpu.append((u.user + u.system - t.user - t.system) / 100)
            print(
                f"  {name:22s} gateway CPU {statistics.median(cpu) * 1e3:5.2f} ms/request   added p50 "
                f"{pct(lat['gateway'], 50) - pct(lat['direct'], 50):+5.2f} ms"
            )
    finally:
        for p in reversed(procs):
            stop_process(p)


def checkpoint(preset: str) -> Path:
    from model_plugins.midashenglm.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir() / f"{preset}-midashenglm", preset=preset)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: --preset, made if absent)")
    ap.add_argument(
        "--preset",
        choices=["tiny", "bench"],
        default="tiny",
        help="random-weight checkpoint size when no --model: 'bench' makes model compute dominate",
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=int, default=16_000, help="sample rate of the 10 s FLAC")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: load,ingest,cpu,isolated")
    ap.add_argument(
        "--inline",
        action="store_true",
        help="forward clips to the engine as base64 inside the JSON (as to engines on other hosts) instead "
        "of as files in a shared tmpfs directory (what `alm serve` does on one host)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the whole engine on core 0, gateway and load generator on core 1 (where `alm serve` puts "
        "engine and gateway on a 2-core CPU host)",
    )
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    logs = cache_dir() / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    model = args.model or checkpoint(args.preset)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    eport, gport = free_port(), free_port()
    engine_url, gw_url = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{gport}"
    engine_prefix, gateway_prefix = (), ()
    if args.pin:
        engine_prefix, gateway_prefix = ("taskset", "-c", "0"), ("taskset", "-c", "1")
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"  # the model worker on core 0, like the rest of the engine
        os.sched_setaffinity(0, {1})
        print("pinned: engine on core 0; gateway and this load generator on core 1")
    procs = []
    shared = make_shared_audio_dir()
    env["ALM_SHARED_AUDIO_DIR"] = "" if args.inline else str(shared)  # for the gateway (engines ignore it)
    print(f"gateway hands clips to the engine {'inline (base64)' if args.inline else 'as files in ' + str(shared)}")
    try:
        if "ingest" not in skip:
            ingest_section(10)
        if "isolated" not in skip:
            isolation_section(args, env, logs)
        if skip >= {"load", "cpu"}:
            return
        # The engine as `alm serve` starts it (the engine contract), on loopback.
        launch = engine_launch(
            EngineSettings(
                model_path=str(model), served_model_name=MODEL, engine_port=eport, shared_audio_dir=str(shared)
            )
        )
        procs.append(
            start([*engine_prefix, *launch.argv], {**env, **launch.env}, engine_url, "/health", logs / "engine.log")
        )
        if "cpu" not in skip:
            engine_cpu_section(engine_url, psutil.Process(procs[0].pid), 10, shared)
        if "load" not in skip:
            gw_env = {**env, "ALM_ENGINE_URLS": engine_url, "ALM_LOG_LEVEL": "WARNING"}
            procs.append(
                start(
                    [*gateway_prefix, *gateway_argv("127.0.0.1", gport)], gw_env, gw_url, "/ready", logs / "gateway.log"
                )
            )
            throughput_section(engine_url, gw_url, psutil.Process(procs[1].pid), args)
    finally:
        for p in reversed(procs):
            stop_process(p)
        shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    main()
