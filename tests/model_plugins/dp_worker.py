"""One tensor-parallel rank of the data-parallel encoder test (test_data_parallel.py).

    python -m tests.model_plugins.dp_worker CHECKPOINT RANK WORLD INIT_METHOD MODE OUT SECONDS...
    python -m tests.model_plugins.dp_worker CHECKPOINT RANK WORLD INIT_METHOD MODE OUT profile ENGINE_ARGS_JSON

Builds the checkpoint's model (MiDashengLM or Qwen-Audio) with tensor_parallel_size=WORLD and
--mm-encoder-tp-mode MODE, embeds the clips and saves this rank's outputs and which clips it
encoded itself to OUT (torch.save). `profile`: the clips are those of vLLM's start-up encoder
profile (its MultiModalBudget's item count, each of the longest accepted length), and OUT also
gets the encoder's window limit and its largest CUDA graph budget on this rank.
"""

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    checkpoint, rank, world, init_method, mode, out = sys.argv[1:7]
    profile = sys.argv[7:8] == ["profile"]
    engine_args = json.loads(sys.argv[8]) if profile else {}
    from tests.model_plugins.conftest import engine_config, load_model, tone

    os.environ["VLLM_DIST_IDENT"] = init_method.split(":")[-1]  # what vLLM's CPU worker sets (shm name)
    engine_args |= {
        "tensor_parallel_size": int(world),
        "mm_encoder_tp_mode": mode,
        "distributed_executor_backend": "mp",
    }
    model = load_model(Path(checkpoint), rank=int(rank), init_method=init_method, **engine_args)
    extra = {}
    if profile:
        from vllm.multimodal import MULTIMODAL_REGISTRY
        from vllm.multimodal.encoder_budget import MultiModalBudget

        config = engine_config(Path(checkpoint), **engine_args)
        items = MultiModalBudget(config, MULTIMODAL_REGISTRY).mm_max_items_per_batch["audio"]
        seconds = [config.model_config.hf_config.max_audio_seconds] * items
        extra = {
            "max_windows": model.encoder.max_windows,
            "graph_budget_range": model.get_encoder_cudagraph_budget_range(config),
        }
    else:
        seconds = [float(s) for s in sys.argv[7:]]
    clips = [torch.from_numpy(tone(s, 150.0 + 40 * i, seed=50 + i)) for i, s in enumerate(seconds)]
    local: list[int] = []
    original = model.embed_audio_local

    def spy(waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        local.extend(int(w.shape[-1]) for w in waveforms)
        return original(waveforms)

    model.embed_audio_local = spy
    with torch.inference_mode():
        outputs = model.embed_audio(clips)
    saved = {"outputs": outputs, "local_lengths": local, "data_parallel": model.encoder_data_parallel}
    torch.save(saved | extra, out)


if __name__ == "__main__":
    main()
