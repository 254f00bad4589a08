"""Data-parallel audio encoder (`--mm-encoder-tp-mode data`): every tensor-parallel rank holds the
whole (small) encoder + projector and encodes its share of the step's clips; the outputs are
all-gathered. Saves the encoder's all-reduces, which cost more than its GEMMs at this size.

Clips are balanced by windows (vLLM's greedy `get_load_balance_assignment`), each rank pads its
output to the largest rank's token count for one all_gather, then every clip goes back to its place.
All ranks see the same clips in the same order (the scheduler's step is replicated), so they
compute the same assignment without talking to each other.
"""

from collections.abc import Callable

import torch
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.models.vision import get_load_balance_assignment


def run_sharded(
    waveforms: list[torch.Tensor],
    windows: list[int],
    tokens: list[int],
    encode: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    hidden: int,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """encode() this rank's clips; return every clip's (tokens_i, hidden) output, in input order."""
    ranks, rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    order, counts, _ = get_load_balance_assignment(windows, ranks)
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
