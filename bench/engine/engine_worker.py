"""One vLLM engine (offline `LLM`) in its own process, driven through protocol.serve().

    python -m bench.engine.engine_worker --result-fd N --model DIR [--eager] [--max-num-batched-tokens N]

Ready message: {"model_class": "module.Class" (asked of the engine's model itself), "startup_s"}.
Commands:
  generate(count, seconds, round, max_tokens) -> {"wall_s", "tokens"}: fresh clips of that
      round (workload.clips), one llm.generate() call, greedy, ignore_eos.
  clips(seconds=[11, 61, 600], max_tokens) -> {"wall_s", "tokens"}: given lengths, one call.
"""

import argparse
import os
import time


def model_class_name(model) -> str:
    """Runs inside the engine's worker (LLM.apply_model): which class serves."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # lets apply_model ship a function
    from vllm import LLM, SamplingParams

    from bench.engine import engine_worker  # importable by name in the engine's processes
    from bench.engine.protocol import serve
    from bench.engine.workload import SAMPLE_RATE, clip, clips, prompt_text

    started = time.perf_counter()
    engine_args = dict(
        model=args.model,
        dtype="float32",
        max_model_len=8192,
        max_num_seqs=args.max_num_seqs,
        seed=0,
        enforce_eager=args.eager,
        trust_remote_code=args.trust_remote_code,
    )
    if args.max_num_batched_tokens:
        engine_args["max_num_batched_tokens"] = args.max_num_batched_tokens
    llm = LLM(**engine_args)
    startup_s = time.perf_counter() - started
    try:
        (model_class,) = set(llm.apply_model(engine_worker.model_class_name))
    except Exception as exc:  # informative only; the log names the class too
        model_class = f"unknown ({type(exc).__name__}: {exc})"

    def run(waveforms, max_tokens: int) -> dict:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        prompts = [
            {"prompt": prompt_text(i), "multi_modal_data": {"audio": (w, SAMPLE_RATE)}} for i, w in enumerate(waveforms)
        ]
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "tokens": [list(o.outputs[0].token_ids) for o in outputs]}

    def generate(count: int, seconds: float, round: int, max_tokens: int) -> dict:
        return run(clips(count, seconds, round), max_tokens)

    def long_clips(seconds: list[float], max_tokens: int) -> dict:
        return run([clip(s, seed=1000 + i) for i, s in enumerate(seconds)], max_tokens)

    try:
        serve(
            args.result_fd,
            {"model_class": model_class, "startup_s": startup_s},
            {"generate": generate, "clips": long_clips},
        )
    finally:
        llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
