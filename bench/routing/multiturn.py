"""Bench (b): two-turn chats about 60 s clips; second-turn time to first token under affinity (the default
``affinity-least-work``) vs ``least-request``, through our gateway in front of two engines.

    .venv/bin/python -m bench.routing.multiturn [--chats 8] [--clip-seconds 60]

Both gateways run at once in front of the same engines; chats alternate between them (each chat a clip no
engine has seen), so both arms meet the same engine state. Per turn: time to the first SSE event (vLLM sends it
once the prefill is done) and the prefix-cache hit tokens vLLM counted (``vllm:prefix_cache_hits_total``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import httpx

from bench.routing.common import clip_part, engine_counter, gateway, quantile, two_engines
from tests.support.engine import EngineProcess

ARMS = ("affinity-least-work", "least-request")


def ttft(client: httpx.Client, url: str, body: dict) -> tuple[float, str]:
    """Seconds to the first SSE event of a streamed chat, and the whole reply's text."""
    start = time.monotonic()
    first = None
    text = []
    with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            first = first or time.monotonic() - start
            if line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or "")
    if first is None:
        raise RuntimeError("empty stream")
    return first, "".join(text)


def hits(engines: list[EngineProcess]) -> float:
    return sum(engine_counter(e, "vllm:prefix_cache_hits_total") for e in engines)


def chat(client: httpx.Client, url: str, model: str, part: dict, engines: list[EngineProcess]) -> list[tuple]:
    """Two turns; per turn (ttft s, prefix-cache hit tokens)."""
    first = [{"role": "user", "content": [part, {"type": "text", "text": "What do you hear?"}]}]
    messages, out = first, []
    for _ in range(2):
        before = hits(engines)
        seconds, reply = ttft(client, url, {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0})
        out.append((seconds, hits(engines) - before))
        messages = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=8, help="per arm")
    parser.add_argument("--clip-seconds", type=float, default=60.0)
    parser.add_argument("--preset", default="tiny", help="checkpoint size: tiny or bench")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-multiturn-"))
    results: dict[str, list[list[tuple]]] = {a: [] for a in ARMS}
    with (
        two_engines(work, args.preset) as engines,
        contextlib.ExitStack() as stack,
        httpx.Client(timeout=900) as client,
    ):
        urls = {a: stack.enter_context(gateway(engines, a)) for a in ARMS}
        model = engines[0].model
        for i in range(args.chats):
            for a, name in enumerate(ARMS if i % 2 == 0 else ARMS[::-1]):
                turns = chat(client, urls[name], model, clip_part(args.clip_seconds, seed=10 * i + a), engines)
                results[name].append(turns)
                print(f"chat {i} {name:20s} " + "  ".join(f"ttft {t:.3f} s hits {h:.0f}" for t, h in turns))
    print(f"\ntwo-turn chats about {args.clip_seconds:.0f} s clips, {args.chats} per arm")
    print(f"{'arm':20s} {'turn-1 p50':>11s} {'turn-2 p50':>11s} {'turn-2 p95':>11s} {'turn-2 hit tokens':>18s}")
    p50 = {}
    for name in ARMS:
        first = [c[0][0] for c in results[name]]
        second = [c[1][0] for c in results[name]]
        p50[name] = quantile(second, 0.5)
        mean_hits = sum(c[1][1] for c in results[name]) / len(results[name])
        print(
            f"{name:20s} {quantile(first, 0.5):11.3f} {p50[name]:11.3f} {quantile(second, 0.95):11.3f} "
            f"{mean_hits:18.0f}"
        )
    print(f"second-turn TTFT p50, least-request / affinity-least-work: {p50['least-request'] / p50[ARMS[0]]:.2f}x")


if __name__ == "__main__":
    main()
