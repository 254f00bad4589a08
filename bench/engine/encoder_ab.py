"""Encoder and processor before/after issue 10, side by side in one process (CPU).

    .venv/bin/python -m bench.engine.encoder_ab [--preset bench] [--counts 1,8,32,128] [--threads 1]

encoder: ms of `embed_audio` (encoder + projector) per second of audio, clips alternating 30 s and
    2 s (count 1 = one 30 s clip). "before" is the pre-issue-10 path kept in
    tests/model_plugins/legacy.py (one STFT per clip, every window in one forward, padded to the
    longest window, always masked); "after" is the plugin. Runs alternate before/after; best of
    --repeats. Also max |after - before| and the peak live activation bytes of each path.
processor: engine-side CPU per request for one 30 s clip (parse + processor + placeholder expansion
    + hashing), median of --requests new clips; "before" re-creates the old expansion (get_vocab()
    per request, lengths by stacking the processed waveforms).
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache"


def mixed(count: int, round_seed: int) -> list[torch.Tensor]:
    from bench.engine.workload import clip

    return [torch.from_numpy(clip(30.0 if i % 2 == 0 else 2.0, seed=round_seed * 1000 + i)) for i in range(count)]


def before(model, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
    from tests.model_plugins.legacy import legacy_encode

    factor = model.projector.factor
    frames = legacy_encode(model.encoder, waveforms)
    tokens = [f.shape[0] // factor for f in frames]
    rows = torch.cat([f[: n * factor] for f, n in zip(frames, tokens, strict=True)])
    return list(model.projector(rows).split(tokens))


def after(model, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
    return model.embed_audio(waveforms)


def encoder_rows(model, counts: list[int], repeats: int) -> list[dict]:
    from tests.model_plugins.memory import ActivationPeak

    rows = []
    for count in counts:
        waves = mixed(count, round_seed=count)
        audio_s = sum(w.shape[0] for w in waves) / 16000
        times: dict[str, list[float]] = {"before": [], "after": []}
        with torch.inference_mode():
            out = {name: fn(model, waves) for name, fn in (("before", before), ("after", after))}  # warm-up
            diff = max((a - b).abs().max().item() for a, b in zip(out["after"], out["before"], strict=True))
            for _ in range(repeats):
                for name, fn in (("before", before), ("after", after)):
                    t0 = time.perf_counter()
                    fn(model, waves)
                    times[name].append(time.perf_counter() - t0)
            peaks = {}
            for name, fn in (("before", before), ("after", after)):
                with ActivationPeak() as peak:
                    fn(model, waves)
                peaks[name] = peak.peak_bytes
        row = {"clips": count, "audio_s": audio_s, "max_abs_diff": diff}
        for name, seconds in times.items():
            row[f"{name}_ms_per_audio_s"] = 1000 * min(seconds) / audio_s
            row[f"{name}_peak_activation_mib"] = peaks[name] / (1 << 20)
        row["speedup"] = row["before_ms_per_audio_s"] / row["after_ms_per_audio_s"]
        rows.append(row)
        print(
            f"  {count:4d} clips ({audio_s:6.0f} s audio): before {row['before_ms_per_audio_s']:.3f} ms/s, "
            f"after {row['after_ms_per_audio_s']:.3f} ms/s, x{row['speedup']:.2f}; peak activations "
            f"{row['before_peak_activation_mib']:.0f} -> {row['after_peak_activation_mib']:.0f} MiB; "
            f"max |diff| {diff:.2e}",
            flush=True,
        )
    return rows


def old_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
    """The pre-issue-10 expansion, for the "before" processor."""
    from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

    from model_plugins.midashenglm.processing import AUDIO_TOKEN

    audio_token_id = self.info.get_tokenizer().get_vocab()[AUDIO_TOKEN]
    waveforms = out_mm_kwargs.get_data().get("waveform", [])

    def expand(item_index: int) -> PromptUpdateDetails:
        tokens = [audio_token_id] * self.info.num_audio_tokens(int(waveforms[item_index].shape[-1]))
        return PromptUpdateDetails.select_token_id(tokens, embed_token_id=audio_token_id)

    return [PromptReplacement(modality="audio", target=[audio_token_id], replacement=expand)]


def processor_rows(checkpoint: Path, requests: int) -> dict:
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from bench.engine.workload import SAMPLE_RATE, clip, prompt_text
    from tests.model_plugins.conftest import engine_config

    new = MULTIMODAL_REGISTRY.create_processor(engine_config(checkpoint).model_config)
    old = MULTIMODAL_REGISTRY.create_processor(engine_config(checkpoint).model_config)
    old._get_prompt_updates = old_prompt_updates.__get__(old)  # this instance only
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    for index in range(requests + 1):
        wave = clip(30.0, seed=7000 + index)  # new audio every request: no cache can answer
        for name, processor in (("before", old), ("after", new)):
            c0 = time.process_time()
            processor(prompt_text(0), processor.info.parse_mm_data({"audio": [(wave, SAMPLE_RATE)]}))
            if index:  # the first request warms up
                cpu[name].append(time.process_time() - c0)
    result = {f"{name}_cpu_ms": 1000 * statistics.median(values) for name, values in cpu.items()}
    before_ms, after_ms = result["before_cpu_ms"], result["after_cpu_ms"]
    print(f"  processor, one 30 s clip: before {before_ms:.2f} ms CPU, after {after_ms:.2f} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--counts", default="1,8,32,128")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the engine's worker gets 1 core here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()

    from bench.engine.checkpoints import describe, make_checkpoint
    from tests.model_plugins.conftest import load_model

    torch.set_num_threads(args.threads)
    checkpoint = make_checkpoint(CACHE / f"ckpt-{args.preset}", args.preset, seed=0)
    model = load_model(checkpoint)
    print(f"\n=== encoder before/after ({args.preset}: {describe(checkpoint)}; {args.threads} thread(s); "
          f"max {model.encoder.max_windows} windows per forward) ===", flush=True)  # fmt: skip
    encoder_rows(model, [int(c) for c in args.counts.split(",")], args.repeats)
    print("=== engine-side preprocessing ===")
    processor_rows(checkpoint, args.requests)


if __name__ == "__main__":
    main()
