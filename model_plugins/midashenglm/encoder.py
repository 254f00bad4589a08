"""The Dasheng audio transformer: a ViT over 64x4 (mel x frame) patches.

Clips are cut into windows of `target_length` frames (~10 s). The windows of every
clip in a batch run as ONE batched forward, zero-padded to the longest window in the
batch (so a batch of short clips does not pay for 10 s windows); padding is masked out
of attention, so a clip's output is the same whatever else shares the batch. Submodule names follow the published
checkpoint (`audio_encoder.blocks.0.attn.qkv.weight`, ...).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.quantization import QuantizationConfig

from .config import DashengEncoderConfig
from .frontend import LogMelFrontend


class DashengAttention(nn.Module):
    def __init__(self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        if config.num_heads % tp_size:
            raise ValueError(f"encoder num_heads={config.num_heads} is not divisible by tensor parallel size {tp_size}")
        self.head_dim = config.embed_dim // config.num_heads
        self.local_heads = config.num_heads // tp_size
        self.qkv = QKVParallelLinear(
            hidden_size=config.embed_dim,
            head_size=self.head_dim,
            total_num_heads=config.num_heads,
            total_num_kv_heads=config.num_heads,
            bias=config.qkv_bias,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv",
        )
        self.proj = RowParallelLinear(
            config.embed_dim, config.embed_dim, quant_config=quant_config, prefix=f"{prefix}.proj"
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: (windows, patches, dim); key_mask: (windows, patches), True = real patch."""
        windows, patches, _ = x.shape
        qkv, _ = self.qkv(x)
        q, k, v = qkv.view(windows, patches, 3, self.local_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        out, _ = self.proj(out.transpose(1, 2).reshape(windows, patches, -1))
        return out


class DashengMlp(nn.Module):
    def __init__(self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = ColumnParallelLinear(config.embed_dim, hidden, quant_config=quant_config, prefix=f"{prefix}.fc1")
        self.act = get_act_fn("gelu")
        self.fc2 = RowParallelLinear(hidden, config.embed_dim, quant_config=quant_config, prefix=f"{prefix}.fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.fc1(x)
        x, _ = self.fc2(self.act(x))
        return x


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DashengBlock(nn.Module):
    """Pre-norm transformer block; LayerScale when the config sets init_values."""

    def __init__(self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        dim, scale = config.embed_dim, config.init_values
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DashengAttention(config, quant_config, prefix=f"{prefix}.attn")
        self.ls1 = LayerScale(dim, scale) if scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DashengMlp(config, quant_config, prefix=f"{prefix}.mlp")
        self.ls2 = LayerScale(dim, scale) if scale else nn.Identity()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, config: DashengEncoderConfig):
        super().__init__()
        self.proj = nn.Conv2d(
            config.input_channels, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_stride
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@dataclass
class WindowBatch:
    """Every clip's windows stacked for one forward.

    mels: (windows, 1, n_mels, width) log-mel frames, zero-padded to the longest window.
    key_mask: (windows, width // frames_per_patch) True where the patch holds real frames.
    patches_per_clip: valid time patches of each clip (frames // frames_per_patch).
    """

    mels: torch.Tensor
    key_mask: torch.Tensor
    patches_per_clip: list[int]


class DashengEncoder(nn.Module):
    """list of (samples,) waveforms -> list of (patches_i, embed_dim) features."""

    def __init__(self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None = None, prefix: str = ""):
        super().__init__()
        self.config = config
        grid_freq = config.n_mels // config.patch_stride[0]
        if grid_freq != 1:  # the published 64x4 patches span all mel bins: one token per time step
            raise ValueError(
                f"patches must span all {config.n_mels} mel bins, got patch height {config.patch_stride[0]}"
            )
        self.front_end = LogMelFrontend(config)
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01)  # over mel bins
        self.patch_embed = PatchEmbed(config)
        self.time_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, 1, config.patches_per_window))
        self.freq_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, grid_freq, 1))
        self.blocks = nn.ModuleList(
            DashengBlock(config, quant_config, prefix=f"{prefix}.blocks.{i}") for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)

    def windows(self, waveforms: list[torch.Tensor]) -> WindowBatch:
        """Log-mel each clip on its own, then cut it into zero-padded windows."""
        target, per_patch = self.config.target_length, self.config.frames_per_patch
        chunks, valid_frames, patches_per_clip = [], [], []
        for waveform in waveforms:
            mel = self.front_end(waveform)  # (n_mels, frames)
            patches = mel.shape[-1] // per_patch
            if patches == 0:
                raise ValueError(f"audio of {waveform.shape[-1]} samples is too short for one encoder patch")
            patches_per_clip.append(patches)
            # Trailing frames that do not fill a patch are dropped, as the patch conv
            # would; so every window holds at least one real patch.
            mel = mel[:, : patches * per_patch]
            for start in range(0, mel.shape[-1], target):
                chunk = mel[:, start : start + target]
                valid_frames.append(chunk.shape[-1])
                chunks.append(chunk)
        width = max(valid_frames)  # a multiple of frames_per_patch, at most target_length
        valid_patches = torch.tensor(valid_frames, device=chunks[0].device) // per_patch
        positions = torch.arange(width // per_patch, device=chunks[0].device)
        return WindowBatch(
            mels=torch.stack([F.pad(chunk, (0, width - chunk.shape[-1])) for chunk in chunks]).unsqueeze(1),
            key_mask=positions[None, :] < valid_patches[:, None],
            patches_per_clip=patches_per_clip,
        )

    def forward_windows(self, mels: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """(windows, 1, n_mels, frames) -> (windows, patches, embed_dim)."""
        x = mels.to(self.time_pos_embed.dtype)
        x = self.init_bn(x.transpose(1, 2)).transpose(1, 2)  # normalise each mel bin
        x = self.patch_embed(x)  # (windows, dim, grid_freq, patches)
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (windows, grid_freq * patches, dim)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

    def forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        batch = self.windows(waveforms)
        features = self.forward_windows(batch.mels, batch.key_mask)
        # Windows are in clip order and only the last window of a clip is partial,
        # so a clip's patches are the first `patches` rows of its windows, in order.
        flat = features.flatten(0, 1)
        per_window = features.shape[1]
        outputs, window = [], 0
        for patches in batch.patches_per_clip:
            count = -(-patches // per_window)
            outputs.append(flat[window * per_window : window * per_window + patches])
            window += count
        return outputs
