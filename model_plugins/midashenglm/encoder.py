"""The Dasheng audio transformer: a ViT over 64x4 (mel x frame) patches.

Clips are cut into windows of `target_length` frames (~10 s) that run in bounded chunks
(windows.py), or, under encoder CUDA graphs, lie end to end on one patch axis with attention
masked to each window (packing.py); padding is masked out of attention either way, so a clip's
output is the same whatever else shares the step. The mel front end and the BatchNorm over mel bins run in float32; the
features are cast to the model dtype only after. Submodule names follow the published
checkpoint (`audio_encoder.blocks.0.attn.qkv.weight`, ...).
"""

from typing import cast

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

from model_plugins.host import to_device

from .config import DashengEncoderConfig
from .frontend import LogMelFrontend, PackedMels
from .packing import PackedRows
from .windows import plan_windows

# Windows per encoder forward when the engine does not size it (tests, benches): 64 x 10 s.
DEFAULT_MAX_WINDOWS = 64


class DashengAttention(nn.Module):
    def __init__(
        self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str, replicated: bool
    ):
        super().__init__()
        tp_size = 1 if replicated else get_tensor_model_parallel_world_size()
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
            disable_tp=replicated,
        )
        self.proj = RowParallelLinear(
            config.embed_dim,
            config.embed_dim,
            quant_config=quant_config,
            prefix=f"{prefix}.proj",
            disable_tp=replicated,
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (windows, patches, dim); key_mask: (windows, patches), True = real patch; None = all real."""
        windows, patches, _ = x.shape
        qkv, _ = self.qkv(x)
        q, k, v = qkv.view(windows, patches, 3, self.local_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out, _ = self.proj(out.transpose(1, 2).reshape(windows, patches, -1))
        return out

    def forward_packed(self, x: torch.Tensor, rows: PackedRows, mask: torch.Tensor) -> torch.Tensor:
        """x: (capacity, dim) packed patches; mask: rows.mask(window ids), (rows, 1, width, keys)."""
        qkv, _ = self.qkv(x)
        qkv = rows.pad(qkv.view(x.shape[0], 3, self.local_heads, self.head_dim))
        q = rows.queries(qkv[:, 0]).transpose(1, 2)  # (rows, heads, width, head_dim)
        k = rows.keys_of(qkv[:, 1]).transpose(1, 2)  # (rows, heads, keys, head_dim)
        v = rows.keys_of(qkv[:, 2]).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out, _ = self.proj(out.transpose(1, 2).flatten(0, 1)[: x.shape[0]].flatten(1))
        return out


class DashengMlp(nn.Module):
    def __init__(
        self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str, replicated: bool
    ):
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = ColumnParallelLinear(
            config.embed_dim, hidden, quant_config=quant_config, prefix=f"{prefix}.fc1", disable_tp=replicated
        )
        self.act = get_act_fn("gelu")
        self.fc2 = RowParallelLinear(
            hidden, config.embed_dim, quant_config=quant_config, prefix=f"{prefix}.fc2", disable_tp=replicated
        )

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

    def __init__(
        self, config: DashengEncoderConfig, quant_config: QuantizationConfig | None, prefix: str, replicated: bool
    ):
        super().__init__()
        dim, scale = config.embed_dim, config.init_values
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DashengAttention(config, quant_config, prefix=f"{prefix}.attn", replicated=replicated)
        self.ls1 = LayerScale(dim, scale) if scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DashengMlp(config, quant_config, prefix=f"{prefix}.mlp", replicated=replicated)
        self.ls2 = LayerScale(dim, scale) if scale else nn.Identity()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward_packed(self, x: torch.Tensor, rows: PackedRows, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn.forward_packed(self.norm1(x), rows, mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, config: DashengEncoderConfig):
        super().__init__()
        self.proj = nn.Conv2d(
            config.input_channels, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_stride
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DashengEncoder(nn.Module):
    """list of (samples,) waveforms -> every clip's (patches_i, embed_dim) features.

    max_windows: the most windows one forward runs (activation memory is linear in it).
    replicated: whole weights on every tensor-parallel rank (data-parallel encoder), not shards.
    """

    def __init__(
        self,
        config: DashengEncoderConfig,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        max_windows: int = DEFAULT_MAX_WINDOWS,
        replicated: bool = False,
    ):
        super().__init__()
        self.config = config
        self.max_windows = max_windows
        grid_freq = config.n_mels // config.patch_stride[0]
        if grid_freq != 1:  # the published 64x4 patches span all mel bins: one token per time step
            raise ValueError(
                f"patches must span all {config.n_mels} mel bins, got patch height {config.patch_stride[0]}"
            )
        self.front_end = LogMelFrontend(config)
        # float32 whatever the default dtype: normalising in bf16 would round the mels first.
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01, dtype=torch.float32)  # over mel bins
        self.patch_embed = PatchEmbed(config)
        self.time_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, 1, config.patches_per_window))
        self.freq_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, grid_freq, 1))
        self.blocks = nn.ModuleList(
            DashengBlock(config, quant_config, prefix=f"{prefix}.blocks.{i}", replicated=replicated)
            for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    def features(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, PackedMels]:
        """The encoder's input features: (n_mels, total_frames + target_length) log-mel, BatchNorm'd
        in float32, then cast to the model dtype; columns laid out as in the returned PackedMels,
        then target_length zero columns, so a whole window can be gathered from any clip."""
        packed = self.front_end(waveforms)
        bn = self.init_bn
        if bn.running_mean is None or bn.running_var is None:  # created with track_running_stats (default)
            raise RuntimeError("init_bn has no running statistics")
        scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
        shift = bn.bias.float() - bn.running_mean.float() * scale
        normed = packed.mels * scale[:, None] + shift[:, None]
        return F.pad(normed.to(self.dtype), (0, self.config.target_length)), packed

    def gather_windows(
        self, features: torch.Tensor, starts: torch.Tensor, valid_frames: torch.Tensor, width: int
    ) -> torch.Tensor:
        """(n_mels, total_frames) + per-window start column and real frames (k,) on the device
        -> (k, 1, n_mels, width) windows, frames past each window's real ones zeroed."""
        offsets = torch.arange(width, device=features.device)
        windows = features[:, starts[:, None] + offsets]  # (n_mels, k, width)
        real = offsets[None, :] < valid_frames[:, None]  # (k, width)
        return torch.where(real[:, None, :], windows.transpose(0, 1), 0).unsqueeze(1)

    def forward_windows(self, windows: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """(windows, 1, n_mels, frames) normalised features -> (windows, frames // 4, embed_dim).

        key_mask: (windows, frames // 4), True = real patch; None when every patch is real.
        """
        x = self.patch_embed(windows)  # (windows, dim, grid_freq, patches)
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (windows, grid_freq * patches, dim)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

    def forward_packed(self, frames: torch.Tensor, position: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """Clips packed end to end (packing.py) -> (capacity, embed_dim).

        frames: (4 * capacity, n_mels) normalised features, patch after patch; position:
        (capacity,) each patch's index in its window; window: (capacity,) its window's id
        (padding slots share PADDING_WINDOW). Fixed shapes, no host sync: CUDA-graph capturable.
        """
        x = self.patch_embed(frames.T[None, None])  # (1, dim, grid_freq = 1, capacity)
        pos = self.time_pos_embed[0, :, 0].index_select(1, position)  # (dim, capacity)
        x = ((x[0, :, 0] + pos) + self.freq_pos_embed[0, :, 0]).T  # (capacity, dim), eager's order of sums
        rows = PackedRows.of(x.shape[0], self.config.patches_per_window)
        mask = rows.mask(window)
        for block in self.blocks:
            x = cast(DashengBlock, block).forward_packed(x, rows, mask)  # ModuleList items are typed as Module
        return self.norm(x)

    def patches_per_clip(self, packed: PackedMels) -> list[int]:
        return self.patches_of(packed.frames)

    def patches_of(self, frames: list[int]) -> list[int]:
        patches = [count // self.config.frames_per_patch for count in frames]
        if min(patches) < 1:
            raise ValueError("an audio clip is too short for one encoder patch")
        return patches

    def encode(self, waveforms: list[torch.Tensor], keep: list[int] | None = None) -> torch.Tensor:
        """-> (sum(keep), embed_dim): the first keep[i] patch outputs of each clip, clip after clip
        (all patches when keep is None)."""
        features, packed = self.features(waveforms)
        return self.encode_features(features, packed.frame_offsets, packed.frames, keep)

    def encode_features(
        self, features: torch.Tensor, frame_offsets: list[int], frames: list[int], keep: list[int] | None = None
    ) -> torch.Tensor:
        """encode() from features() already computed: the clips whose frames start at frame_offsets
        (columns of `features`) and have `frames` frames each."""
        patches = self.patches_of(frames)
        per_patch = self.config.frames_per_patch
        plan = plan_windows(patches, self.config.patches_per_window, self.max_windows)
        bases, kept, before = plan.keep_layout(patches if keep is None else keep)
        starts = [
            frame_offsets[clip] + index * self.config.target_length
            for clip, index in zip(plan.clip, plan.index, strict=True)
        ]
        meta = to_device([starts, [v * per_patch for v in plan.valid], bases, kept, before], features.device)
        # Each chunk's output goes straight into one buffer, so only one chunk's activations live at a time.
        rows_out = plan.row_base[-1] + plan.chunks[-1].width if plan.chunks else 0
        flat = torch.empty(rows_out, self.config.embed_dim, dtype=self.dtype, device=features.device)
        for chunk in plan.chunks:
            span = slice(chunk.start, chunk.stop)
            windows = self.gather_windows(features, meta[0, span], meta[1, span], chunk.width * per_patch)
            key_mask = None
            if chunk.masked:
                key_mask = torch.arange(chunk.width, device=features.device) < (meta[1, span, None] // per_patch)
            out = self.forward_windows(windows, key_mask)
            first = plan.row_base[chunk.start]
            flat[first : first + out.shape[0] * out.shape[1]].copy_(out.flatten(0, 1))
            del windows, out
        return flat.index_select(0, gather_rows(meta[2], meta[3], meta[4], sum(kept)))

    def forward(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """-> list of (patches_i, embed_dim)."""
        patches = [self.front_end.num_frames(int(w.shape[-1])) // self.config.frames_per_patch for w in waveforms]
        return list(self.encode(waveforms).split(patches))


def gather_rows(bases: torch.Tensor, kept: torch.Tensor, before: torch.Tensor, total: int) -> torch.Tensor:
    """Row indices (total,) that pick `kept[w]` rows from `bases[w]` on, window after window,
    built on the device (output_size given: no sync)."""
    window = torch.repeat_interleave(torch.arange(bases.shape[0], device=bases.device), kept, output_size=total)
    return bases[window] + torch.arange(total, device=bases.device) - before[window]
