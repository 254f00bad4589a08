"""Data-parallel audio encoders: with tensor parallelism, every rank holds the whole (small) encoder and encodes its
share of the step's clips; one all_gather gives every rank every clip's embeddings. Shared by our plugins.

When: `--mm-encoder-tp-mode data` (vLLM's switch; the model class opts in with `supports_encoder_tp_data`), or,
as vLLM's in-tree vision encoders do (`is_vit_use_data_parallel`), whenever the encoder's heads cannot be split
over the tensor-parallel ranks, or the encoder is replicated anyway (Qwen-Audio's plain-torch tower): sharding the
clips then only removes repeated work.

Clips are balanced by a per-clip load (vLLM's greedy `get_load_balance_assignment`), each rank pads its output to
the largest rank's token count for one all_gather, then every clip goes back to its place. All ranks see the same
clips in the same order (the scheduler's step is replicated), so they compute the same assignment without talking
to each other.
"""

from collections.abc import Callable

import torch
from vllm.config import VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.logger import init_logger
from vllm.model_executor.models.vision import get_load_balance_assignment

logger = init_logger(f"vllm.plugins.{__name__}")


def use_data_parallel(vllm_config: VllmConfig, num_heads: int | None = None, *, replicated: bool = False) -> bool:
    """Whether the audio encoder runs data-parallel across the tensor-parallel ranks: only with tensor parallelism,
    then if asked (`mm_encoder_tp_mode == "data"`), if `num_heads` do not divide over the ranks (falls back, with a
    warning, where sharding the weights would fail), or if the encoder is `replicated` on every rank anyway."""
    ranks = vllm_config.parallel_config.tensor_parallel_size
    if ranks <= 1:
        return False
    if num_heads is not None and num_heads % ranks:
        logger.warning(
            "The audio encoder's %d attention heads do not divide over %d tensor-parallel ranks: "
            "falling back to a data-parallel audio encoder (whole weights on every rank).",
            num_heads,
            ranks,
        )
        return True
    mm_config = vllm_config.model_config.multimodal_config
    return replicated or (mm_config is not None and mm_config.mm_encoder_tp_mode == "data")


def data_parallel_rank() -> tuple[int, int]:
    """(ranks, this rank) of the data-parallel encoder: the tensor-parallel group's."""
    return get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()


def run_sharded(
    waveforms: list[torch.Tensor],
    loads: list[int],
    tokens: list[int],
    encode: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    hidden: int,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """encode() this rank's clips (balanced by `loads`); return every clip's (tokens_i, hidden) output, in input
    order."""
    ranks, rank = data_parallel_rank()
    order, counts, _ = get_load_balance_assignment(loads, ranks)
    starts = [sum(counts[:r]) for r in range(ranks + 1)]
    mine = order[starts[rank] : starts[rank + 1]]
    device = waveforms[0].device
    local = encode([waveforms[i] for i in mine]) if mine else []
    rank_tokens = [sum(tokens[i] for i in order[starts[r] : starts[r + 1]]) for r in range(ranks)]
    padded = torch.zeros(max(rank_tokens), hidden, dtype=dtype, device=device)
    if local:
        out = torch.cat(local)
        padded[: out.shape[0]].copy_(out)
    gathered = tensor_model_parallel_all_gather(padded, dim=0)  # (ranks * max, hidden)
    outputs: list[torch.Tensor | None] = [None] * len(waveforms)
    for r in range(ranks):
        row = r * padded.shape[0]
        for i in order[starts[r] : starts[r + 1]]:
            outputs[i] = gathered[row : row + tokens[i]]
            row += tokens[i]
    return [out for out in outputs if out is not None]
