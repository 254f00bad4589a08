"""Micro-measurements in their own process, driven through protocol.serve().

    python -m bench.engine.micro_worker --result-fd N --model DIR [--no-model]

Commands:
  encoder(count, seconds, round, threads, repeats) -> {"batched_ms_per_audio_s", "per_clip_ms_per_audio_s"}:
      our MiDashengLM.embed_audio (encoder + projector, as the engine calls it) on the
      round's clips, all in one call and one clip per call; best of `repeats`.
  preprocess(seconds, repeats) -> {"cpu_ms", "wall_ms"}: the engine-side multimodal
      processor of whichever model class the registry resolves for DIR (ours, or vLLM's
      in-tree one when run with VLLM_PLUGINS=none) on one clip + prompt, CPU time per
      request via time.process_time (median of `repeats`, after one warm-up call).
"""

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--no-model", action="store_true", help="processor only (no weights loaded)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args()

    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.plugins import load_general_plugins

    from bench.engine.protocol import serve
    from bench.engine.workload import SAMPLE_RATE, clip, clips, prompt_text

    load_general_plugins()
    engine_args = EngineArgs(
        model=args.model, dtype="float32", enforce_eager=True, trust_remote_code=args.trust_remote_code
    )
    model_config = engine_args.create_engine_config().model_config
    model = None
    if not args.no_model:
        from tests.model_plugins.conftest import load_model  # vLLM's own loader, as a worker does

        model = load_model(args.model)

    def encoder(count: int, seconds: float, round: int, threads: int, repeats: int) -> dict:
        torch.set_num_threads(threads)
        waves = [torch.from_numpy(w) for w in clips(count, seconds, round)]
        audio_s = count * seconds
        batched, per_clip = [], []
        with torch.inference_mode():
            model.embed_audio(waves[:2])  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.embed_audio(waves)
                batched.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for w in waves:
                    model.embed_audio([w])
                per_clip.append(time.perf_counter() - t0)
        return {
            "threads": threads,
            "batched_ms_per_audio_s": 1000 * min(batched) / audio_s,
            "per_clip_ms_per_audio_s": 1000 * min(per_clip) / audio_s,
        }

    def preprocess(seconds: float, repeats: int) -> dict:
        processor = MULTIMODAL_REGISTRY.create_processor(model_config)
        text = prompt_text(0)
        cpu, wall = [], []
        for index in range(repeats + 1):
            wave = clip(seconds, seed=5000 + index)  # new audio each time: no cache can answer
            c0, w0 = time.process_time(), time.perf_counter()
            items = processor.info.parse_mm_data({"audio": [(wave, SAMPLE_RATE)]})
            processor(text, items)
            if index:  # the first call warms up
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
        return {
            "processor": f"{type(processor).__module__}.{type(processor).__qualname__}",
            "cpu_ms": 1000 * statistics.median(cpu),
            "wall_ms": 1000 * statistics.median(wall),
        }

    serve(args.result_fd, {}, {"encoder": encoder, "preprocess": preprocess})


if __name__ == "__main__":
    main()
