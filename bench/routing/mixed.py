"""Bench (a): short clips behind long ones. Poisson arrivals, 80 % 2–5 s clips and 20 % 60–120 s clips, against
two engines through: our gateway under ``least-work``, our gateway under ``least-request``, and vllm-router
``round_robin``. Prints p50/p95 latency of the short clips per arm and the ratios.

    .venv/bin/python -m bench.routing.mixed [--rate 0.5] [--requests 40] [--rounds 2]

Arms run one after another on the same two engines, in a different order each round, each round's arms on the
same arrival schedule and clip lengths (distinct audio per request: no prefix-cache hits between arms).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from bench.routing.common import clip_part, gateway, quantile, two_engines, vllm_router
from tests.support.engine import EngineProcess

ARMS = ("least-work", "least-request", "vllm-router-rr")


def schedule(rate: float, n: int, seed: int) -> list[tuple[float, float]]:
    """(arrival offset s, clip seconds) for ``n`` requests: exponential gaps, 80 % 2–5 s and 20 % 60–120 s."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1 / rate, n))
    long = rng.random(n) < 0.2
    seconds = np.where(long, rng.uniform(60, 120, n), rng.uniform(2, 5, n))
    return [(float(o), float(s)) for o, s in zip(offsets, seconds, strict=True)]


@contextlib.contextmanager
def arm(name: str, engines: list[EngineProcess], work: Path) -> Iterator[str]:
    if name == "vllm-router-rr":
        with vllm_router(engines, "round_robin", work / "vllm-router.log") as url:
            yield url
    else:
        with gateway(engines, name) as url:
            yield url


def run(url: str, model: str, plan: list[tuple[float, float]], parts: list[dict], max_tokens: int) -> list[float]:
    """Send ``plan`` (one thread per request, at its offset); the latency of each, in plan order (nan: failed)."""
    latencies = [float("nan")] * len(plan)
    start = time.monotonic() + 0.5

    def one(i: int) -> None:
        time.sleep(max(start + plan[i][0] - time.monotonic(), 0))
        body = {
            "model": model,
            "messages": [{"role": "user", "content": [parts[i], {"type": "text", "text": "What is this?"}]}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
        sent = time.monotonic()
        with httpx.Client(timeout=900) as client:
            resp = client.post(url + "/v1/chat/completions", json=body)
        if resp.status_code == 200:
            latencies[i] = time.monotonic() - sent
        else:
            print(f"  request {i} failed: {resp.status_code} {resp.text[:200]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(plan))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.5, help="arrivals per second")
    parser.add_argument("--requests", type=int, default=40, help="per arm and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--preset", default="tiny", help="checkpoint size: tiny or bench")
    args = parser.parse_args()
    arms = args.arms.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    short: dict[str, list[float]] = {a: [] for a in arms}
    long: dict[str, list[float]] = {a: [] for a in arms}
    with two_engines(work, args.preset) as engines:
        model = engines[0].model
        for r in range(args.rounds):
            plan = schedule(args.rate, args.requests, seed=r)
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for a, name in enumerate(order):
                parts = [clip_part(s, seed=100_000 * r + 1000 * a + i) for i, (_, s) in enumerate(plan)]
                with arm(name, engines, work) as url:
                    latencies = run(url, model, plan, parts, args.max_tokens)
                for (_, seconds), latency in zip(plan, latencies, strict=True):
                    (short if seconds < 10 else long)[name].append(latency)
                done = [x for x, (_, s) in zip(latencies, plan, strict=True) if x == x and s < 10]
                print(
                    f"round {r} {name:15s} short clips: {len(done)} done, p50 {quantile(done, 0.5):.3f} s "
                    f"p95 {quantile(done, 0.95):.3f} s",
                    flush=True,
                )
    print(f"\nshort clips (2-5 s), rate {args.rate}/s, {args.rounds} rounds x {args.requests} requests per arm")
    print(f"{'arm':16s} {'n':>4s} {'p50 s':>8s} {'p95 s':>8s}   long p50 s")
    stats = {}
    for name in arms:
        ok = [x for x in short[name] if x == x]
        stats[name] = (quantile(ok, 0.5), quantile(ok, 0.95))
        long_ok = [x for x in long[name] if x == x]
        failed = len(short[name]) - len(ok) + len(long[name]) - len(long_ok)
        print(
            f"{name:16s} {len(ok):4d} {stats[name][0]:8.2f} {stats[name][1]:8.2f}   {quantile(long_ok, 0.5):8.2f}"
            f"   failed {failed}"
        )
    if "least-work" in stats:
        for other in (a for a in arms if a != "least-work"):
            p50 = stats[other][0] / stats["least-work"][0]
            p95 = stats[other][1] / stats["least-work"][1]
            print(f"{other} / least-work: p50 {p50:.2f}x  p95 {p95:.2f}x")


if __name__ == "__main__":
    main()
