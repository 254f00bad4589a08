"""The HF-style eager baseline (hf_baseline.py) in its own process, driven through protocol.serve().

    python -m bench.engine.hf_worker --result-fd N --model DIR [--threads T]

Ready message: {"threads", "tower_max_abs_diff"} (batched tower vs the reference re-computation).
Commands:
  generate(count, seconds, round, max_tokens, batch) -> {"wall_s", "tokens"}: the round's
      clips, `batch` at a time (1 = the sequential loop, 32 = one static batch).
"""

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench.engine.hf_baseline import HFBaseline
    from bench.engine.protocol import serve
    from bench.engine.workload import clip, clips, prompt_text

    torch.set_grad_enabled(False)
    baseline = HFBaseline(args.model)
    diff = baseline.check(clip(10.0, seed=7))

    def generate(count: int, seconds: float, round: int, max_tokens: int, batch: int) -> dict:
        waves = clips(count, seconds, round)
        texts = [prompt_text(i) for i in range(count)]
        tokens = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, count, batch):
                tokens += baseline.generate(texts[start : start + batch], waves[start : start + batch], max_tokens)
        return {"wall_s": time.perf_counter() - t0, "tokens": tokens}

    serve(args.result_fd, {"threads": torch.get_num_threads(), "tower_max_abs_diff": diff}, {"generate": generate})


if __name__ == "__main__":
    main()
