"""The Qwen-Audio audio tower: a Whisper-large-v2-style encoder, 2x average pooling, projection to the LLM width,
and the learned bos/eos pair that frames each clip's span.

Published semantics (`audio.py` of QwenLM/Qwen-Audio, `AudioEncoder.forward`/`encode`), per clip of mel_len real
frames: T = (mel_len - 1) // 2 + 1 frames after the stride-2 conv, n = (T - 2) // 2 + 1 pooled frames kept.
The convs see the clip's first 2T mel frames (the published code cuts the batch at 2 * max T); self-attention
attends only to the clip's first T frames (its padding mask puts -inf on the other keys); pooled frame j averages
frames 2j and 2j + 1 < T, so every kept output depends on real frames only.

One deliberate difference, for batch invariance: the published code cuts the mels at the LONGEST clip's 2T, so a
shorter clip's last conv frame sees one padding mel frame when batched and a zero when alone. We give every clip
its alone-semantics (mel frames from 2T on are zero for the convs), i.e. the published batch-of-one result, which
is also what a one-audio prompt gets there.

Plain torch layers, whole on every tensor-parallel rank (~0.6 B parameters; with TP each rank encodes a share of
the clips: model_plugins/data_parallel.py): module names follow the published checkpoint so the weight table
(audio_weights.py) maps names one to one. Lengths are host ints; a pass's masks come from one non-blocking copy.
"""

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model_plugins.host import to_device

from .audio_weights import load_audio_weights
from .passes import plan_passes


def clip_sizes(mel_len: int) -> tuple[int, int]:
    """(T frames after the convs, n pooled frames kept) for a clip of mel_len real mel frames (published formula)."""
    frames = (mel_len - 1) // 2 + 1
    return frames, (frames - 2) // 2 + 1


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table (length, channels): sin over the first half of channels, cos over the second."""
    half = channels // 2
    inv_timescales = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half, dtype=torch.float64))
    scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class AudioAttention(nn.Module):
    """Self-attention with Whisper's names: query/value/out with bias, key without."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (clips, frames, width); key_mask: (clips, frames), True = real frame; None = all real."""
        clips, frames, width = x.shape
        q, k, v = (
            proj(x).view(clips, frames, self.heads, -1).transpose(1, 2) for proj in (self.query, self.key, self.value)
        )
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(head_dim), as published
        return self.out(out.transpose(1, 2).reshape(clips, frames, width))


class AudioBlock(nn.Module):
    """Pre-norm residual block: attn_ln -> attn, mlp_ln -> mlp (Linear, GELU, Linear)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = AudioAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


class QwenAudioEncoder(nn.Module):
    """(mels (B, n_mels, frames) float32, mel_lengths (B,)) -> per clip (n_i + 2, output_dim): [bos, n_i frames, eos].

    audio_config: the published config.json `audio` section as attributes (n_mels, n_ctx, n_state, n_head,
    n_layer, output_dim, avg_pool, add_audio_bos_eos_token).
    """

    positional_embedding: torch.Tensor

    def __init__(self, audio_config, prefix: str = ""):
        super().__init__()
        c = audio_config
        if not c.avg_pool or not c.add_audio_bos_eos_token:
            # The published span formula (n = (T - 2) // 2 + 1, plus bos/eos) assumes both.
            raise ValueError(
                "only avg_pool=true and add_audio_bos_eos_token=true (the published setting) are supported"
            )
        if c.n_state % c.n_head:
            raise ValueError(f"audio n_state {c.n_state} must be a multiple of n_head {c.n_head}")
        self.config = c
        self.prefix = prefix
        self.conv1 = nn.Conv1d(c.n_mels, c.n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.n_state, c.n_state, kernel_size=3, stride=2, padding=1)
        # Persistent like the published buffer (it is in the checkpoint); the loader keeps these values if not.
        self.register_buffer("positional_embedding", sinusoids(c.n_ctx, c.n_state).to(torch.get_default_dtype()))
        self.blocks = nn.ModuleList(AudioBlock(c.n_state, c.n_head) for _ in range(c.n_layer))
        self.ln_post = nn.LayerNorm(c.n_state)
        self.proj = nn.Linear(c.n_state, c.output_dim)
        self.audio_bos_eos_token = nn.Embedding(2, c.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def output_sizes(self, mel_lengths: list[int]) -> list[int]:
        """Rows of each clip's output: n_i + 2."""
        return [clip_sizes(m)[1] + 2 for m in mel_lengths]

    def forward(self, mels: torch.Tensor, mel_lengths: Sequence[int]) -> list[torch.Tensor]:
        """mels: (B, n_mels, >= 2 * max T) float32 log-mel (the front end's (B, 80, frames)); mel_lengths: B host ints,
        real frames per clip -> list of (n_i + 2, output_dim) in the model dtype, [bos, n_i frames, eos].

        Clips run in passes of similar length (passes.py); the tower (tower.py) computes each pass's mels itself."""
        lengths = list(mel_lengths)
        self.check_lengths(mels, lengths)
        rows: list[torch.Tensor] = [mels.new_empty(0)] * len(lengths)
        for picked in plan_passes([clip_sizes(m)[0] for m in lengths]):
            # Row views stacked on the device: no index tensor to copy from the host.
            group = torch.stack([mels[i] for i in picked]) if len(picked) < len(lengths) else mels
            for i, out in zip(picked, self.encode(group, [lengths[i] for i in picked]), strict=True):
                rows[i] = out
        return [self.frame(r) for r in rows]

    def check_lengths(self, mels: torch.Tensor, lengths: list[int]) -> None:
        if mels.dim() != 3 or mels.shape[0] != len(lengths) or mels.shape[1] != self.config.n_mels:
            raise ValueError(f"mels of shape {tuple(mels.shape)} for {len(lengths)} clips of {self.config.n_mels} mels")
        limit = min(mels.shape[2], 2 * self.config.n_ctx)
        if min(lengths) < 1 or max(lengths) > limit:
            raise ValueError(f"mel_lengths {lengths} must lie in 1..{limit} frames")

    def frame(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, output_dim) -> (n + 2, output_dim): the learned bos and eos around a clip's frames."""
        bos, eos = self.audio_bos_eos_token.weight.split(1)
        return torch.cat([bos, rows, eos])

    def encode(self, mels: torch.Tensor, mel_lengths: list[int]) -> list[torch.Tensor]:
        """One pass: mels (clips, n_mels, >= 2 * max T), mel_lengths host ints -> list of (n_i, output_dim) pooled,
        normalised, projected frames. Padded to the pass's longest clip only; no host sync (the lengths travel in
        one non-blocking copy, host.py)."""
        sizes = [clip_sizes(m) for m in mel_lengths]
        frames = [t for t, _ in sizes]
        longest = max(frames)
        device = mels.device
        x = mels[:, :, : 2 * longest].float()
        key_mask = None
        if min(frames) < longest:
            # Each clip sees its own first 2T mel frames and zeros after (its batch-of-one result), and attends to
            # its first T frames. Equal lengths need neither: the pass is cut at exactly 2T.
            real = to_device([frames], device)[0]  # (clips,) T
            x = torch.where(torch.arange(2 * longest, device=device) < 2 * real[:, None, None], x, 0.0)
            key_mask = torch.arange(longest, device=device) < real[:, None]
        x = F.gelu(self.conv1(x.to(self.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (clips, longest, width)
        x = x + self.positional_embedding[:longest].to(x.dtype)
        for block in self.blocks:
            x = block(x, key_mask)
        pooled = x[:, : longest // 2 * 2].unflatten(1, (longest // 2, 2)).mean(dim=2)  # AvgPool1d(2, 2)
        kept = torch.cat([pooled[i, :n] for i, (_, n) in enumerate(sizes)])
        out = self.proj(self.ln_post(kept))
        return list(out.split([n for _, n in sizes]))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Published tensors named relative to `transformer.audio.` -> the names of ours that now hold them.

        Raises ValueError naming any unknown, duplicated, mis-shaped or missing tensor."""
        return load_audio_weights(self, weights)
