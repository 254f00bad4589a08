"""The 5x subsampling projector: concat 5 encoder frames -> Linear -> GELU -> Linear."""

import torch
from torch import nn
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig


class SubsampleProjector(nn.Module):
    def __init__(
        self,
        encoder_dim: int,
        text_dim: int,
        factor: int,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        replicated: bool = False,
    ):
        super().__init__()
        self.factor = factor
        self.fc1 = ColumnParallelLinear(
            encoder_dim * factor, text_dim, quant_config=quant_config, prefix=f"{prefix}.fc1", disable_tp=replicated
        )
        self.act = get_act_fn("gelu")
        self.fc2 = RowParallelLinear(
            text_dim, text_dim, quant_config=quant_config, prefix=f"{prefix}.fc2", disable_tp=replicated
        )

    def num_tokens(self, encoder_frames: int) -> int:
        return encoder_frames // self.factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(tokens * factor, encoder_dim) frames, each token's `factor` frames consecutive
        -> (tokens, text_dim). Every clip of a step goes through the two matmuls together."""
        x, _ = self.fc1(frames.reshape(-1, self.factor * frames.shape[-1]))
        x, _ = self.fc2(self.act(x))
        return x
