"""Greedy tokens of the real engine before and after a plugin change, on the same clips.

    .venv/bin/python -m bench.engine.greedy_ab [--before-rev 9313450] [--preset tiny]

Exports `model_plugins/` of --before-rev (default: the commit before issue 10) with `git archive`
into bench/engine/.cache/, then runs one vLLM engine (float32, eager) per tree in its own process.
The engine runs in that process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so for "before" the worker
can put the old tree first on sys.path and drop the editable install's import hook (which would
otherwise map `model_plugins` to this checkout) before vLLM loads the plugin. Every clip set is
one generate() call; prints the plugin file each engine imported and whether each prompt's greedy
tokens are identical.
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "bench" / "engine" / ".cache"
# name -> clip seconds sent together in one generate() call
CLIP_SETS = {"mixed": [2.0, 30.0, 3.0, 10.08, 25.0, 61.0, 2.0, 30.0], "alone": [30.0], "long": [600.0]}


def use_tree(tree: str) -> None:
    """Import `model_plugins` from `tree`, not from the editable install of this checkout."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path.insert(0, tree)


def worker(checkpoint: str, out: str) -> None:
    if os.environ.get("ALM_PLUGIN_TREE"):
        use_tree(os.environ["ALM_PLUGIN_TREE"])
    from vllm import LLM, SamplingParams

    import model_plugins
    from bench.engine.workload import SAMPLE_RATE, clip, prompt_text

    llm = LLM(model=checkpoint, dtype="float32", enforce_eager=True, max_model_len=8192, max_num_seqs=8, seed=0)
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    tokens = {}
    for name, seconds in CLIP_SETS.items():
        prompts = [
            {"prompt": prompt_text(i), "multi_modal_data": {"audio": (clip(s, seed=900 + i), SAMPLE_RATE)}}
            for i, s in enumerate(seconds)
        ]
        tokens[name] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, greedy)]
    Path(out).write_text(json.dumps({"plugin": model_plugins.__file__, "tokens": tokens}))
    llm.llm_engine.engine_core.shutdown()


def export(rev: str) -> Path:
    target = CACHE / f"plugin-{rev}"
    if not (target / "model_plugins").exists():
        archive = subprocess.run(["git", "archive", rev, "model_plugins"], cwd=REPO, check=True, capture_output=True)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
    return target


def run(checkpoint: Path, out: Path, tree: Path | None, log: Path) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "ALM_PLUGIN_TREE": str(tree or "")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    command = [sys.executable, "-m", "bench.engine.greedy_ab", "--worker", str(checkpoint), str(out)]
    with open(log, "wb") as sink:
        subprocess.run(command, cwd=REPO, env=env, stdout=sink, stderr=sink, check=True, timeout=900)
    return json.loads(out.read_text())


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-rev", default="9313450")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    from bench.engine.checkpoints import make_checkpoint

    checkpoint = make_checkpoint(CACHE / f"ckpt-{args.preset}", args.preset, seed=0)
    old_tree = export(args.before_rev)
    results = {
        "before": run(checkpoint, CACHE / "greedy-before.json", old_tree, CACHE / "greedy-before.log"),
        "after": run(checkpoint, CACHE / "greedy-after.json", None, CACHE / "greedy-after.log"),
    }
    for name, result in results.items():
        print(f"{name}: plugin from {result['plugin']}")
    same = total = 0
    for clip_set, seconds in CLIP_SETS.items():
        pairs = zip(results["before"]["tokens"][clip_set], results["after"]["tokens"][clip_set], strict=True)
        equal = [b == a for b, a in pairs]
        same, total = same + sum(equal), total + len(equal)
        print(f"  {clip_set:6} {seconds}: identical greedy tokens for {sum(equal)}/{len(equal)} prompts")
    print(f"greedy tokens identical for {same}/{total} prompts ({args.preset} checkpoint, float32, eager)")


if __name__ == "__main__":
    main()
