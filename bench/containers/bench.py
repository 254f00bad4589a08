"""Containers vs host benchmark (issue 9, item 6; prints ratios measured side by side; not a CI pass/fail).

    .venv/bin/python bench/containers/bench.py [--reps 6] [--requests 256] [--concurrency 8]
                                               [--placement pinned|default] [--skip-build]

1. Build: the images as tests/containers builds them, warm (layer cache; only what changed since the last build
   is rebuilt), then once more with nothing changed; the CPU image's size.
2. Start to ready: `alm serve` (start → "serving") and the compose stack (`up` → the gateway counts its engine
   healthy), on the same tiny checkpoint, with the same ALM_* settings (deploy/alm.env + compose.test.yml).
3. The same workload through both, ONE engine + one gateway each, interleaved host, containers, containers,
   host, …: closed loop at concurrency 8, a speech-like 10 s 16 kHz FLAC in ``input_audio``, max_tokens 8
   (bench/gateway's load); then 16 requests one at a time. Throughput ratio containers / host and added p50.
   Placement ``pinned`` (default): the containers get the cores `alm serve` gives its processes (on 2 cores:
   engine 0, gateway 1; bench/containers/compose.bench.yml); ``default``: compose's own (nothing pinned).
   The load generator runs on the gateway's core(s), as bench/gateway --pin does.
Both stacks stay up through the reps; the idle one's CPU use while the other is loaded is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from alm.paths import cache_dir  # noqa: E402
from alm.placement import cpu_plan  # noqa: E402
from bench.containers.arms import ContainerArm, HostArm, affinity, cpu_seconds, shared_settings  # noqa: E402
from bench.gateway.bench import audio, body, load, pct  # noqa: E402
from model_plugins.midashenglm.tiny import ensure_tiny_checkpoint  # noqa: E402
from tests.containers.stack import IMAGE, SERVED_MODEL, PodmanService, build_images, image_size_bytes  # noqa: E402
from tests.support.audio_synth import encode, speechlike  # noqa: E402

RATE, SECONDS, MAX_TOKENS = 16_000, 10.0, 8
COLD = (
    "cold, quoted from tests/containers' printed timings (2026-11-30): base image 0 s (existed; debootstrap ~35 s),"
    " wheelhouse 50 s, cpu image 153 s (dependency layer rebuilt), up to ready 53 s (2 engines); image 3.90 GB"
)


def rebuilt(log: Path) -> str:
    """How many steps of the last CPU image build in ``log`` ran instead of coming from the layer cache."""
    commands = re.split(r"^\$ ", log.read_text(), flags=re.MULTILINE)  # stack.run writes "$ argv" before output
    (*_, last) = (out for out in commands if "--target cpu" in out.split("\n", 1)[0])
    steps = len(re.findall(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (?!FROM )", last, re.MULTILINE))  # FROM: no layer
    return f"{steps - last.count('Using cache')} of {steps} steps rebuilt"


def build_section(log: Path) -> list[str]:
    warm = build_images(log)
    warm_rebuilt = rebuilt(log)
    again = build_images(log)
    return [
        "== 1. image build (tests/containers' build_images: base image, wheelhouse, cpu image, prometheus image)",
        "  warm:  " + ", ".join(f"{k} {v:.1f} s" for k, v in warm.items()) + f"  (cpu image: {warm_rebuilt})",
        "  again: " + ", ".join(f"{k} {v:.1f} s" for k, v in again.items()) + f"  (cpu image: {rebuilt(log)})",
        f"  {COLD}",
        f"  image {IMAGE}: {image_size_bytes(IMAGE) / 1e9:.2f} GB",
    ]


def busy() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    t = psutil.cpu_times()
    # guest time is already inside user time on Linux
    extra = sum(getattr(t, k, 0.0) for k in ("idle", "iowait", "guest", "guest_nice"))
    return sum(t) - extra


def payload() -> bytes:
    flac = encode(speechlike(SECONDS, RATE), RATE, "flac")
    request = json.loads(body([audio(flac, "flac")], MAX_TOKENS))
    request["model"] = SERVED_MODEL
    return json.dumps(request).encode()


def load_section(arms: dict[str, HostArm | ContainerArm], args: argparse.Namespace) -> list[str]:
    data = payload()
    procs = {name: arm.processes() for name, arm in arms.items()}
    everything = {name: [p for ps in found.values() for p in ps] for name, found in procs.items()}
    for arm in arms.values():  # warm-up (and a check that both answer)
        asyncio.run(load(arm.url, data, 32, args.concurrency))
    results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in arms}
    sequential: dict[str, list[float]] = {name: [] for name in arms}
    idle: dict[str, list[float]] = {name: [] for name in arms}  # CPU share of the OTHER arm while one is loaded
    foreign: list[float] = []  # cores busy with neither arm nor this load generator (a shared machine)
    me = [psutil.Process()]
    names = list(arms)
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:  # ABBA: drift hits both arms alike
            (other,) = (n for n in names if n != name)
            ours = everything[name] + everything[other] + me
            cpu0, ours0, busy0, t0 = cpu_seconds(everything[other]), cpu_seconds(ours), busy(), time.perf_counter()
            results[name].append(asyncio.run(load(arms[name].url, data, args.requests, args.concurrency)))
            elapsed = time.perf_counter() - t0
            idle[other].append((cpu_seconds(everything[other]) - cpu0) / elapsed)
            foreign.append(max(0.0, busy() - busy0 - (cpu_seconds(ours) - ours0)) / elapsed)
            sequential[name] += asyncio.run(load(arms[name].url, data, 16, 1))[1]
    thr = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    lat = {k: [x for r in v for x in r[1]] for k, v in results.items()}
    pairs = statistics.median(c[0] / h[0] for h, c in zip(results["host"], results["containers"], strict=True))
    lines = [
        f"== 3. one engine + one gateway each: {SECONDS:.0f} s FLAC at {RATE} Hz ({len(data)} B request), max_tokens "
        f"{MAX_TOKENS}, concurrency {args.concurrency}, {args.reps} interleaved reps x {args.requests} requests",
    ]
    for name in names:
        lines.append(
            f"  {name:10s} {thr[name]:7.2f} req/s   p50 {pct(lat[name], 50):6.1f} ms   p99 {pct(lat[name], 99):6.1f} ms"
            f"   per-rep req/s {[round(r[0], 1) for r in results[name]]}"
        )
    added_seq = pct(sequential["containers"], 50) - pct(sequential["host"], 50)
    lines += [
        f"  throughput containers / host = {thr['containers'] / thr['host']:.3f}x (median of per-rep pairs "
        f"{pairs:.3f}x)   (goal >= 0.95x)",
        f"  added p50 = {pct(lat['containers'], 50) - pct(lat['host'], 50):+.1f} ms   (goal <= +3 ms); one request "
        f"at a time: {pct(sequential['host'], 50):.1f} -> {pct(sequential['containers'], 50):.1f} ms, added p50 "
        f"{added_seq:+.1f} ms",
        "  idle stack's CPU while the other is loaded: "
        + ", ".join(f"{n} {statistics.median(v) * 100:.1f} % of a core" for n, v in idle.items()),
        f"  CPU busy outside both arms and the load generator (other users, kernel, conmon) during the reps: "
        f"median {statistics.median(foreign):.2f}, max {max(foreign):.2f} cores (of {psutil.cpu_count()})",
        "  CPU sets (main threads): "
        + "; ".join(f"{n}: " + ", ".join(f"{s} {affinity(ps)}" for s, ps in procs[n].items()) for n in names),
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--requests", type=int, default=256, help="requests per rep and arm")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--placement", choices=["pinned", "default"], default="pinned", help="the containers' cores")
    ap.add_argument("--skip-build", action="store_true", help="use the image as it is (it may lag the tree)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/containers needs root (rootful Podman), like tests/containers")
    work = cache_dir() / "bench-containers"
    work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if not args.skip_build:
        lines += build_section(work / "build.log")
        print("\n".join(lines), flush=True)
    models = work / "models"
    ensure_tiny_checkpoint(models / SERVED_MODEL)
    for path in [models, *models.rglob("*")]:  # the image's user (10001) reads the mounted checkpoint
        path.chmod(0o755 if path.is_dir() else 0o644)

    plan = cpu_plan(1)
    podman = PodmanService(work / "podman.sock", work / "podman-service.log")
    host: HostArm | None = None
    containers: ContainerArm | None = None
    try:
        host = HostArm.start(models / SERVED_MODEL, work)
        containers = ContainerArm.start(podman.docker_host, models, work, plan if args.placement == "pinned" else None)
        host_cores = f"engine {plan.engines[0]}, gateway {plan.gateway}" if plan.gateway else "not pinned"
        section = [
            f"== 2. start to ready: host (alm serve) {host.ready_s:.1f} s; containers (`up` of engine + gateway "
            f"-> the gateway counts its engine healthy) {containers.ready_s:.1f} s",
            f"  settings of both arms: {' '.join(f'{k}={v}' for k, v in sorted(shared_settings().items()))}",
            f"  placement: host: alm serve's plan ({host_cores}); containers: {containers.placement}",
        ]
        if plan.gateway:
            os.sched_setaffinity(0, plan.gateway)  # the load generator beside both gateways
            section.append(f"  load generator on core(s) {plan.gateway}")
        print("\n".join(section), flush=True)
        lines += section
        section = load_section({"host": host, "containers": containers}, args)
        print("\n".join(section), flush=True)
        lines += section
    finally:
        for arm in (containers, host):
            if arm is not None:
                arm.stop()
        podman.stop()
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
