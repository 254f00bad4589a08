"""Per-family numbers on each family's tiny checkpoint (docs/families.md); prints them, not a CI pass/fail.

    .venv/bin/python bench/families.py --family qwen2-audio [--requests 16] [--seconds 5] [--tokens 16]
                                       [--reps 5] [--latency-reps 20] [--inline]

1. Engine start: from launching the engine (the engine contract, as ``alm serve`` starts it, with the family's
   extras; their one-time set-up is done before the clock starts) to its first 200 on ``/health``.
2. Engine throughput: ``--requests`` chat requests sent at once, each a ``--seconds`` 16-bit WAV tone in
   ``input_audio`` and exactly ``--tokens`` output tokens (``ignore_eos``), directly to the engine and through
   the gateway, interleaved ``--reps`` times after one warm-up burst each; requests/s and output tokens/s of the
   median rep.
3. Gateway added latency: the same request one at a time, direct and through the gateway alternately,
   ``--latency-reps`` each after two warm-ups; p50 of each and their difference.

The gateway runs as its own process (``alm gateway``) with the model's facts from the checkpoint
(``ALM_MODEL_FACTS``, as ``alm serve`` sets them) and hands clips over as files in a shared directory as
``alm serve`` does (``--inline``: as base64 in the JSON, as to engines on other hosts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alm.families import engine_env, model_facts_env  # noqa: E402
from alm.gateway import gateway_argv  # noqa: E402
from alm.paths import cache_dir, make_shared_audio_dir  # noqa: E402
from alm.processes import free_port, spawn, stop_process, wait_ok  # noqa: E402
from alm.tiny import FAMILIES, make  # noqa: E402
from tests.families.support import family_engine, tone, wav_b64  # noqa: E402


def checkpoint(family: str) -> Path:
    """The family's tiny checkpoint (seed 0), made once into alm's cache."""
    path = cache_dir() / "bench-families" / f"tiny-{family}"
    return path if (path / "config.json").exists() else make(family, path, seed=0)


def payload(model: str, seconds: float, tokens: int) -> bytes:
    part = {"type": "input_audio", "input_audio": {"data": wav_b64(tone(seconds)), "format": "wav"}}
    message = {"role": "user", "content": [part, {"type": "text", "text": "Describe the audio."}]}
    body = {"model": model, "messages": [message], "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    return json.dumps(body).encode()


async def burst(url: str, body: bytes, requests: int) -> tuple[float, int]:
    """``requests`` requests at once → (requests/s, output tokens)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=requests)) as client:

        async def one() -> int:
            resp = await client.post(url + "/v1/chat/completions", content=body, headers=JSON)
            resp.raise_for_status()
            return int(resp.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        tokens = await asyncio.gather(*(one() for _ in range(requests)))
        return requests / (time.perf_counter() - start), sum(tokens)


JSON = {"content-type": "application/json"}


def one_at_a_time(urls: dict[str, str], body: bytes, reps: int) -> dict[str, list[float]]:
    """Each URL in turn, ``reps`` times after two warm-ups → latencies (s) per name."""
    out: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client(timeout=600) as client:
        for rep in range(reps + 2):
            for name, url in urls.items():
                start = time.perf_counter()
                client.post(url + "/v1/chat/completions", content=body, headers=JSON).raise_for_status()
                if rep >= 2:
                    out[name].append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=list(FAMILIES))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--latency-reps", type=int, default=20)
    parser.add_argument("--inline", action="store_true", help="clips to the engine as base64, not as files")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ckpt = checkpoint(args.family)
    engine_env(ckpt, cpu=True)  # the Omni extras' one-time set-up, outside the timed start
    logs = cache_dir() / "bench-families" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shared = None if args.inline else make_shared_audio_dir()
    try:
        start = time.perf_counter()
        with family_engine(ckpt, logs / f"engine-{args.family}.log", shared_audio_dir=shared) as engine:
            started = time.perf_counter() - start
            print(f"== {args.family} ({ckpt})\n  engine start {started:.1f} s (launch → /health 200)")
            port = free_port()
            gw_url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("ALM_")}
            env.update(ALM_ENGINE_URLS=engine.url, ALM_MODEL_FACTS=model_facts_env({engine.model: ckpt}),
                       ALM_SHARED_AUDIO_DIR=str(shared or ""))  # fmt: skip
            log = logs / f"gateway-{args.family}.log"
            gateway = spawn("gateway", gateway_argv("127.0.0.1", port), gw_url, env, log).proc
            try:
                if not wait_ok(gateway, gw_url + "/ready", 120):
                    sys.exit(f"gateway did not start; see {log}")
                report(args, engine.model, {"direct": engine.url, "gateway": gw_url})
            finally:
                stop_process(gateway)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, model: str, urls: dict[str, str]) -> None:
    body = payload(model, args.seconds, args.tokens)
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in urls}
    for url in urls.values():  # warm-up: first connections, the gateway's decode threads
        asyncio.run(burst(url, body, args.requests))
    for _ in range(args.reps):
        for name, url in urls.items():
            runs[name].append(asyncio.run(burst(url, body, args.requests)))
    what = f"{args.requests} requests at once x {args.seconds:g} s clip x {args.tokens} tokens"
    print(f"  throughput ({what}, median of {args.reps}):")
    for name, results in runs.items():
        rate, tokens = sorted(results)[len(results) // 2]
        rates = ", ".join(f"{r:.2f}" for r, _ in results)
        print(f"    {name:8} {rate:6.2f} req/s  {rate * args.tokens:7.1f} output tok/s  (reps: {rates})")
        if tokens != args.requests * args.tokens:
            print(f"    {name:8} WARNING: {tokens} output tokens, not {args.requests * args.tokens}")
    lat = one_at_a_time(urls, body, args.latency_reps)
    p50 = {name: statistics.median(values) * 1e3 for name, values in lat.items()}
    direct, gateway = p50["direct"], p50["gateway"]
    print(f"  one at a time, p50 of {args.latency_reps}: direct {direct:.1f} ms, gateway {gateway:.1f} ms, "
          f"added {gateway - direct:+.1f} ms")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
