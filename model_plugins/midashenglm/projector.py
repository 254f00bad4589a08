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
    ):
        super().__init__()
        self.factor = factor
        self.fc1 = ColumnParallelLinear(
            encoder_dim * factor, text_dim, quant_config=quant_config, prefix=f"{prefix}.fc1"
        )
        self.act = get_act_fn("gelu")
        self.fc2 = RowParallelLinear(text_dim, text_dim, quant_config=quant_config, prefix=f"{prefix}.fc2")

    def num_tokens(self, encoder_frames: int) -> int:
        return encoder_frames // self.factor

    def forward(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (frames_i, encoder_dim) -> list of (frames_i // factor, text_dim).

        Trailing frames that do not fill a group of `factor` are dropped. All clips
        go through the two matmuls together.
        """
        counts = [self.num_tokens(clip.shape[0]) for clip in clips]
        grouped = torch.cat(
            [clip[: n * self.factor].reshape(n, -1) for clip, n in zip(clips, counts, strict=True)]
        )
        x, _ = self.fc1(grouped)
        x, _ = self.fc2(self.act(x))
        return list(x.split(counts))
