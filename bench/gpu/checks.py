"""The checks: each takes the run's Setup and a mix, prints its lines through the Report.

A check that needs CUDA still runs its code path on the CPU in the dry run (so it cannot rot) and reports
`ok=skipped` with what it computed there.
"""

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from vllm.v1.worker.encoder_cudagraph_defs import ENCODER_CUDAGRAPH_AXIS_KEYS_KWARG

from model_plugins.midashenglm.frontend import LogMelFrontend
from model_plugins.qwen_audio.tower import embed_clips

from .build import DashengTower
from .report import Report

SAMPLE_RATE = 16000


@dataclass
class Setup:
    device: torch.device
    small: bool
    tower: DashengTower  # bf16 (the serving dtype), max_windows = the largest mix's windows
    report: Report

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def verdict(self, ok: bool) -> bool | None:
        return ok if self.cuda else None


def clips(mix: tuple[int, float], device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """`count` seeded clips of `seconds`: a tone in noise, float32 at 16 kHz (as the processor hands them over)."""
    count, seconds = mix
    generator = torch.Generator().manual_seed(seed)
    n = round(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    out = []
    for i in range(count):
        wave = 0.3 * torch.sin(2 * torch.pi * (180.0 + 37 * i) * t) + 0.05 * torch.randn(n, generator=generator)
        out.append(wave.float().to(device))
    return out


def name(mix: tuple[int, float]) -> str:
    return f"{mix[0]}x{mix[1]:g}s"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Median time of `fn` after one warm-up: CUDA events on a GPU, the wall clock on the CPU."""
    fn()
    times = []
    for _ in range(reps if device.type == "cuda" else 1):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time

            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


class SyncTrap:
    """`torch.cuda.set_sync_debug_mode("error")` inside the block: any host <-> device sync raises."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"

    def __enter__(self) -> None:
        if self.active:
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.cuda.set_sync_debug_mode("default")


def no_sync(setup: Setup, check: str, mix: str, step: Callable[[], object]) -> None:
    """Runs `step` once to warm up (plans, allocator), then once under the sync trap."""
    try:
        step()
        sync(setup.device)
        with SyncTrap(setup.device):
            step()
        sync(setup.device)
        setup.report.line(check, mix, setup.verdict(True), "no_host_sync")
    except RuntimeError as exc:  # the sync debug mode raises RuntimeError naming the synchronizing call
        setup.report.error(check, mix, exc)


def dasheng_step(setup: Setup, mix: tuple[int, float]) -> None:
    """Host syncs in MiDashengLM's encoder step; its encoder CUDA graph at this mix's windows = eager; timing."""
    tower, waves = setup.tower, clips(mix, setup.device)
    no_sync(setup, "dasheng_sync", name(mix), lambda: tower.embed_audio_local(waves))
    try:
        eager = torch.cat(tower.embed_audio_local(waves)).float()
        capture, fill = graph_buffers(setup, tower, waves)
        fill()  # first fill: outside the trap (the step's front end is computed lazily on first use)
        no_sync(setup, "dasheng_graph_inputs_sync", name(mix), fill)
        run, graph_ms = graph_or_rerun(setup, lambda: tower.encoder_cudagraph_forward(capture))
        out = run()[: eager.shape[0]].float()
        cosine = F.cosine_similarity(out.flatten(), eager.flatten(), dim=0).item()
        setup.report.line("dasheng_graph_equals_eager", name(mix), setup.verdict(cosine >= 0.999), f"{cosine:.6f}")
        eager_ms = timed_ms(lambda: tower.embed_audio_local(waves), setup.device)
        forward_ms = timed_ms(lambda: tower.encoder_cudagraph_forward(capture), setup.device)
        value = f"eager_step_ms={eager_ms:.2f},eager_forward_ms={forward_ms:.2f},replay_ms={graph_ms:.2f}"
        setup.report.line("dasheng_time", name(mix), setup.verdict(True), value)
    except Exception as exc:  # report and go on to the next check
        setup.report.error("dasheng_graph_equals_eager", name(mix), exc)


def graph_buffers(
    setup: Setup, tower: DashengTower, waves: list[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """The captured buffers for this batch (one budget = the batch's size, in the model's unit: windows or
    patches) and a function that fills them as vLLM's EncoderCudaGraphManager does before a replay: select the
    items, build the replay buffers, copy them in with the model's padding logic (else zero + copy)."""
    mm: dict[str, Any] = {"waveform": waves}
    budget = sum(spec.input_size for spec in tower.get_encoder_cudagraph_item_specs(mm))
    indices = list(range(len(waves)))
    axis_keys = tower.select_encoder_cudagraph_items(mm, indices).pop(ENCODER_CUDAGRAPH_AXIS_KEYS_KWARG, ())
    inputs = tower.prepare_encoder_cudagraph_capture_inputs(
        budget, len(waves), budget, setup.device, tower.encoder.dtype, axis_keys=tuple(axis_keys) or None
    )
    capture = {key: value for key, value in inputs.values.items() if value is not None}
    padding = tower.get_encoder_cudagraph_config().padding_logics

    def fill() -> None:
        selected = tower.select_encoder_cudagraph_items(mm, indices)
        selected.pop(ENCODER_CUDAGRAPH_AXIS_KEYS_KWARG, None)
        replay = tower.prepare_encoder_cudagraph_replay_buffers(selected, len(waves), budget).values
        for key, buffer in capture.items():
            source = replay.get(key)
            if source is None:
                continue
            if key in padding:
                padding[key](buffer, source)
            else:
                buffer.zero_()
                buffer[: source.shape[0]].copy_(source)

    return capture, fill


def graph_or_rerun(setup: Setup, forward: Callable[[], torch.Tensor]) -> tuple[Callable[[], torch.Tensor], float]:
    """Captures `forward` in a torch.cuda.CUDAGraph (after warm-up on a side stream, as vLLM does) -> (replay
    returning the output buffer, replay time in ms). On the CPU: a re-run of the forward, timed likewise."""
    if not setup.cuda:
        return forward, timed_ms(forward, setup.device, reps=2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with SyncTrap(setup.device), torch.cuda.graph(graph):
        output = forward()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay, timed_ms(graph.replay, setup.device)


def dasheng_memory(setup: Setup, mix: tuple[int, float]) -> None:
    """Peak memory of one encoder step with 60 vs 120 windows per forward (the mix has >= 120 windows)."""
    tower, waves = setup.tower, clips(mix, setup.device)
    if not setup.cuda:
        setup.report.line("dasheng_peak_memory", name(mix), None, "needs_cuda")
        return
    saved, peaks = tower.encoder.max_windows, {}
    try:
        for windows in (60, 120):
            tower.encoder.max_windows = windows
            sync(setup.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(setup.device)
            base = torch.cuda.memory_allocated(setup.device)
            tower.embed_audio_local(waves)
            sync(setup.device)
            peaks[windows] = (torch.cuda.max_memory_allocated(setup.device) - base) / 2**20
    finally:
        tower.encoder.max_windows = saved
    value = f"peak_mib_60={peaks[60]:.0f},peak_mib_120={peaks[120]:.0f},ratio={peaks[60] / peaks[120]:.2f}"
    setup.report.line("dasheng_peak_memory", name(mix), peaks[60] < peaks[120], value)


def frontend_cuda_vs_cpu(setup: Setup, mix: tuple[int, float]) -> None:
    """The float32 log-mel front end on the device = on the CPU, in dB, over every clip's own frames."""
    front = setup.tower.encoder.front_end
    waves = clips(mix, torch.device("cpu"))
    host = LogMelFrontend(front.config)(waves)
    device = front([w.to(setup.device) for w in waves])
    worst = 0.0
    for offset, frames in zip(host.frame_offsets, host.frames, strict=True):
        cols = slice(offset, offset + frames)
        worst = max(worst, (device.mels[:, cols].cpu() - host.mels[:, cols]).abs().max().item())
    setup.report.line("frontend_device_vs_cpu_db", name(mix), setup.verdict(worst < 1e-3), f"{worst:.2e}")


def bf16_features(setup: Setup, mix: tuple[int, float]) -> None:
    """bf16 encoder input features = the float32 ones rounded once to bf16, within 2x that rounding (max, mean)."""
    encoder, waves = setup.tower.encoder, clips(mix, setup.device)
    features, packed = encoder.features(waves)
    reference = torch.empty(0)
    saved = encoder.patch_embed.proj.weight
    try:  # the same encoder's features in float32: `dtype` is read from the patch embedding's weight
        encoder.patch_embed.proj.weight = torch.nn.Parameter(saved.float(), requires_grad=False)
        reference, _ = encoder.features(waves)
    finally:
        encoder.patch_embed.proj.weight = saved
    cols = torch.cat([torch.arange(o, o + f) for o, f in zip(packed.frame_offsets, packed.frames, strict=True)])
    cols = cols.to(setup.device)
    got, want = features[:, cols].float(), reference[:, cols]
    error = (got - want).abs()
    rounding = (want.to(torch.bfloat16).float() - want).abs()
    ok = error.max() <= 2 * rounding.max() and error.mean() <= 2 * rounding.mean()
    value = f"max={error.max().item():.2e},mean={error.mean().item():.2e},rounding_max={rounding.max().item():.2e}"
    setup.report.line("bf16_features", name(mix), bool(ok), value)


def cufft_plans(setup: Setup, lengths: list[float]) -> None:
    """cuFFT plans cached after the front end meets len(lengths) clip lengths: bounded by the STFT buckets."""
    front = setup.tower.encoder.front_end
    cache = torch.backends.cuda.cufft_plan_cache[setup.device.index or 0] if setup.cuda else None
    if cache is not None:
        cache.clear()
    for seconds in lengths:
        front(clips((1, seconds), setup.device))
    sync(setup.device)
    if cache is None:
        setup.report.line("cufft_plan_cache", f"{len(lengths)}_lengths", None, "needs_cuda")
        return
    setup.report.line("cufft_plan_cache", f"{len(lengths)}_lengths", cache.size <= 16, f"plans={cache.size}")


def qwen_audio_sync(setup: Setup, encoder: torch.nn.Module, mix: tuple[int, float]) -> None:
    waves = clips(mix, setup.device)
    no_sync(setup, "qwen_audio_sync", name(mix), lambda: embed_clips(encoder, waves))  # type: ignore[arg-type]
