"""Encoder work of the encoder CUDA graphs vs the eager encoder, per mix of issue 23 (counted on the CPU).

    .venv/bin/python -m bench.gpu.work

Drives vLLM's real EncoderCudaGraphManager (graphs replaced by counting, tests/model_plugins/graph_work.py) over
the tiny checkpoint with a deployment's budgets (120 windows profiled: 64 ... 30240 patches), one step per mix,
and prints one line per mix: `mix=NAME ratio=R`, R = replay work / eager work in FLOPs of the published encoder
(linear layers per patch slot + attention per query-key pair). Nothing here needs a GPU; the numbers are counts,
not timings.
"""

import os
import tempfile
from pathlib import Path


def main() -> None:
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # stdout holds only the mix lines (set before vLLM loads)
    from model_plugins.midashenglm.tiny import ensure_tiny_checkpoint
    from tests.model_plugins.conftest import engine_config, load_model
    from tests.model_plugins.graph_work import DEPLOYED_WINDOWS, MIXES, cpu_graphs, make_manager, mix_clips, work_ratio

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = ensure_tiny_checkpoint(Path(tmp) / "tiny")
        model = load_model(checkpoint)
        model.encoder.max_windows = DEPLOYED_WINDOWS
        with cpu_graphs():
            manager = make_manager(model, engine_config(checkpoint), compute=False)
        for name, seconds in MIXES.items():
            ratio, _ = work_ratio(model, manager, mix_clips(seconds))
            print(f"mix={name} ratio={ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
