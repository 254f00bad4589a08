"""One tensor-parallel rank of the data-parallel encoder test (test_data_parallel.py).

    python -m tests.model_plugins.dp_worker CHECKPOINT RANK WORLD INIT_METHOD MODE OUT SECONDS...

Builds the checkpoint's model (MiDashengLM or Qwen-Audio) with tensor_parallel_size=WORLD and
--mm-encoder-tp-mode MODE, embeds the clips and saves this rank's outputs and which clips it
encoded itself to OUT (torch.save).
"""

import os
import sys
from pathlib import Path

import torch


def main() -> None:
    checkpoint, rank, world, init_method, mode, out = sys.argv[1:7]
    seconds = [float(s) for s in sys.argv[7:]]
    from tests.model_plugins.conftest import load_model, tone

    os.environ["VLLM_DIST_IDENT"] = init_method.split(":")[-1]  # what vLLM's CPU worker sets (shm name)

    model = load_model(
        Path(checkpoint), rank=int(rank), init_method=init_method,
        tensor_parallel_size=int(world), mm_encoder_tp_mode=mode, distributed_executor_backend="mp",
    )  # fmt: skip
    clips = [torch.from_numpy(tone(s, 150.0 + 40 * i, seed=50 + i)) for i, s in enumerate(seconds)]
    local: list[int] = []
    original = model.embed_audio_local

    def spy(waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        local.extend(int(w.shape[-1]) for w in waveforms)
        return original(waveforms)

    model.embed_audio_local = spy
    with torch.inference_mode():
        outputs = model.embed_audio(clips)
    torch.save({"outputs": outputs, "local_lengths": local, "data_parallel": model.encoder_data_parallel}, out)


if __name__ == "__main__":
    main()
