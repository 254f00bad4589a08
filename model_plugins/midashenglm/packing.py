"""Clips packed end to end on one patch axis, attention block-diagonal per 1008-frame window.

Dasheng attends only within a window (252 patches, ~10 s); every other layer works patch by
patch. So a batch's clips can lie end to end on ONE axis of C patch slots (the encoder CUDA
graphs' capacity, cudagraph.py): clip after clip, each clip's windows in order (all full but its
last), then padding. Nothing is padded to a whole window; a patch attends only to the patches
of its own window.

`PackedRows` lays the attention of C slots out at fixed shapes (as a CUDA graph needs): R =
ceil(C / 252) rows of W = ceil(C / R) <= 252 query slots; each row's queries see the keys from
HALO = 251 slots before the row to 251 after it, masked to the query's own window (a window of
<= 252 patches around any of its patches lies within +-251 of it). One row holds everything when
C <= 252, with no halo. So a replay runs C patch slots through the linear layers (exactly the
capacity) and R * W * (W + 2 * HALO) attention pairs (at most ~3x a full window's 252 per query).

`EncoderWork` counts both and weighs them in FLOPs of a config (the published one for the
numbers we quote): linear layers 2 * (4 + 2 * mlp_ratio) * dim^2 per slot, attention 4 * dim per
query-key pair (QK^T and AV), per layer. Eager's work is its own padded layout (windows.py).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DashengEncoderConfig
from .windows import WindowPlan

# Window id of capacity padding (all padding slots attend each other: finite, and discarded).
PADDING_WINDOW = -1
# Window id of the slots added to fill the last row and the halo (never a query anyone keeps).
OUTSIDE = -2


@dataclass(frozen=True)
class EncoderWork:
    """tokens: patch slots through the linear layers; pairs: query-key pairs attention scores."""

    tokens: int
    pairs: int

    def __add__(self, other: "EncoderWork") -> "EncoderWork":
        return EncoderWork(self.tokens + other.tokens, self.pairs + other.pairs)

    def flops(self, config: DashengEncoderConfig) -> float:
        dim = config.embed_dim
        per_token = 2 * (4 + 2 * config.mlp_ratio) * dim * dim
        return config.depth * (self.tokens * per_token + self.pairs * 4 * dim)


def eager_work(plan: WindowPlan) -> EncoderWork:
    """What the eager encoder runs for `plan`: every chunk padded to its own width."""
    tokens = pairs = 0
    for chunk in plan.chunks:
        tokens += (chunk.stop - chunk.start) * chunk.width
        pairs += (chunk.stop - chunk.start) * chunk.width * chunk.width
    return EncoderWork(tokens, pairs)


@dataclass(frozen=True)
class PackedRows:
    """The fixed attention layout of `capacity` packed patch slots (see the module doc)."""

    capacity: int
    rows: int
    width: int
    halo: int

    @classmethod
    def of(cls, capacity: int, per_window: int) -> "PackedRows":
        if capacity < 1:
            raise ValueError(f"a packed batch needs at least 1 patch slot, got {capacity}")
        rows = -(-capacity // per_window)
        width = -(-capacity // rows)
        return cls(capacity, rows, width, per_window - 1 if rows > 1 else 0)

    @property
    def keys(self) -> int:
        return self.width + 2 * self.halo

    @property
    def work(self) -> EncoderWork:
        return EncoderWork(self.capacity, self.rows * self.width * self.keys)

    def pad(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """(capacity, ...) -> (rows * width + 2 * halo, ...): halo before, fill and halo after."""
        after = self.rows * self.width - self.capacity + self.halo
        pads = [0, 0] * (x.dim() - 1) + [self.halo, after]
        return F.pad(x, pads, value=value)

    def queries(self, padded: torch.Tensor) -> torch.Tensor:
        """padded (rows * width + 2 * halo, ...) -> (rows, width, ...): each row's query slots."""
        return padded[self.halo : self.halo + self.rows * self.width].unflatten(0, (self.rows, self.width))

    def keys_of(self, padded: torch.Tensor) -> torch.Tensor:
        """padded (rows * width + 2 * halo, ...) -> (rows, keys, ...): each row's key slots (a view)."""
        windows = padded.unfold(0, self.keys, self.width)  # (rows, ..., keys)
        return windows.movedim(-1, 1)

    def mask(self, window_ids: torch.Tensor) -> torch.Tensor:
        """(capacity,) window id per slot -> (rows, 1, width, keys) bool: query and key share a window."""
        ids = self.pad(window_ids, value=OUTSIDE)
        return (self.queries(ids)[:, :, None] == self.keys_of(ids)[:, None, :]).unsqueeze(1)
