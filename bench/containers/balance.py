"""How two gateway containers share two engine replicas: per round, what each engine served, its mean latency
(vLLM's own e2e histogram) and its mean requests in flight (the gateways' alm_gateway_engine_request_seconds_total
over the round's wall time), on the stack of tests/containers (CPU image, tiny checkpoint, least-request).

Every request carries one prepared 1 s clip and decodes exactly N tokens, 8 clients split over the two gateways,
so the engines (not this script's clients) are the bottleneck. On a 2-core host the OS makes one replica several
times slower than the other at times, and least-request then rightly sends it fewer: this prints by how much.

    .venv/bin/python -m bench.containers.balance [--rounds 48:384,192:96] [--own-counts-only] [--cpu-hog]

``--own-counts-only`` turns off the engines' load reports (``ALM_ENGINE_LOAD_METRICS=false``); ``--cpu-hog`` runs
one busy process beside the stack (what an idle vLLM worker's polling or another job does on a shared box).
Needs root and scripts/install-test-tools.sh, as tests/containers do.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from model_plugins.midashenglm.tiny import make_tiny_checkpoint
from tests.containers.stack import (
    ENGINE_START_TIMEOUT_S,
    SERVED_MODEL,
    PodmanService,
    Stack,
    build_images,
    wait_for,
)
from tests.support.audio_synth import audio_part

CLIENTS = 8
OWN_COUNTS_ONLY = "services:\n  gateway:\n    environment:\n      ALM_ENGINE_LOAD_METRICS: 'false'\n"


def engine_totals(stack: Stack, container: str) -> tuple[float, float]:
    """(requests served, seconds of e2e latency summed) from an engine's own /metrics."""
    served = seconds = 0.0
    for line in stack.engine_get(container, "/metrics").splitlines():
        if line.startswith("vllm:request_success_total"):
            served += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:e2e_request_latency_seconds_sum"):
            seconds += float(line.rsplit(" ", 1)[1])
    return served, seconds


def gateway_seconds(gateways: list[str]) -> dict[str, float]:
    """Engine address → seconds the gateways' requests held a slot on it, summed over gateways."""
    prefix = 'alm_gateway_engine_request_seconds_total{engine="'
    totals: dict[str, float] = {}
    for url in gateways:
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            if line.startswith(prefix):
                engine = line[len(prefix) : line.index('"', len(prefix))]
                totals[engine] = totals.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def addresses(containers: list[str]) -> dict[str, str]:
    """Engine address as the gateways name it (IP:8000) → container name."""
    found = {}
    for name in containers:
        out = subprocess.run(
            ["podman", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for ip in out.split():
            found[f"{ip}:8000"] = name
    return found


def run_round(stack: Stack, gateways: list[str], tokens: int, requests: int) -> str:
    engines = stack.containers("engine")
    names = addresses(engines)
    clients = {
        url: openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600) for url in gateways
    }
    content = [audio_part("wav", 1.0), {"type": "text", "text": "Hear?"}]

    def one(url: str) -> None:
        reply = clients[url].chat.completions.create(
            model=SERVED_MODEL,
            max_tokens=tokens,
            temperature=0,
            extra_body={"min_tokens": tokens},
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
        )
        assert reply.usage is not None and reply.usage.completion_tokens == tokens, reply.usage

    before = {e: engine_totals(stack, e) for e in engines}
    held_before = gateway_seconds(gateways)
    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, [gateways[i % len(gateways)] for i in range(requests)]))
    wall = time.monotonic() - start
    held = {names[a]: (s - held_before.get(a, 0.0)) / wall for a, s in gateway_seconds(gateways).items()}
    parts = []
    for e in engines:
        served, seconds = (after - first for after, first in zip(engine_totals(stack, e), before[e], strict=True))
        parts.append(
            f"{'_'.join(e.rsplit('_', 2)[-2:])} served {served:4.0f}, "
            f"mean latency {seconds / max(served, 1):5.2f} s, mean in flight {held.get(e, 0.0):4.2f}"
        )
    return f"{tokens:4d} tokens x {requests:4d} in {wall:5.1f} s | " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", default="48:384,48:384,192:96,192:96", help="TOKENS:REQUESTS,...")
    parser.add_argument("--own-counts-only", action="store_true")
    parser.add_argument("--cpu-hog", action="store_true")
    args = parser.parse_args()
    rounds = [tuple(int(x) for x in r.split(":")) for r in args.rounds.split(",")]

    work = Path(tempfile.mkdtemp(prefix="alm-balance-"))
    log = work / "commands.log"
    build_images(log)
    models = work / "models"
    make_tiny_checkpoint(models / "tiny-midashenglm")
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    extra: tuple[Path, ...] = ()
    if args.own_counts_only:
        (work / "own-counts.yml").write_text(OWN_COUNTS_ONLY)
        extra = (work / "own-counts.yml",)
    podman = PodmanService(work / "podman.sock", work / "service.log")
    stack = Stack(f"almbalance{uuid.uuid4().hex[:6]}", podman.docker_host, models, log, extra_files=extra)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.cpu_hog else None
    try:
        stack.up(engines=2, gateways=2)
        for name in stack.containers("engine"):
            wait_for(lambda name=name: stack.engine_ready(name), ENGINE_START_TIMEOUT_S, name)
        gateways = stack.gateway_urls()
        for url in gateways:
            wait_for(lambda url=url: stack.healthy_engines(url) == 2, 60, f"gateway {url} to see 2 engines")
        for tokens, requests in rounds:
            print(run_round(stack, gateways, tokens, requests), flush=True)
    finally:
        if hog is not None:
            hog.kill()
        stack.down()
        podman.stop()


if __name__ == "__main__":
    main()
