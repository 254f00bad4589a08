"""Published audio-tower tensor names (relative to `transformer.audio.`) -> our encoder's names, and the checks.

No index of the published shards is public: the names below are inferred from the published module tree
(`audio.py`: Whisper's original names, `positional_embedding` a persistent buffer). So every mismatch is an error
that names the tensor: an unknown name, a name seen twice, a wrong shape, or a tensor the checkpoint lacks.
"""

from collections.abc import Iterable

import torch
from torch import nn

from .names import NameTable

AUDIO_NAMES: tuple[tuple[str, str], ...] = (
    (r"conv([12])\.(weight|bias)", r"conv\1.\2"),
    (r"positional_embedding", "positional_embedding"),
    (r"blocks\.(\d+)\.attn\.(query|value|out)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.attn\.key\.weight", r"blocks.\1.attn.key.weight"),  # Whisper's key has no bias
    (r"blocks\.(\d+)\.(attn_ln|mlp_ln)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.([02])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"ln_post\.(weight|bias)", r"ln_post.\1"),
    (r"proj\.(weight|bias)", r"proj.\1"),
    (r"audio_bos_eos_token\.weight", "audio_bos_eos_token.weight"),
)
"""Published name (regex, relative to `transformer.audio.`) -> our module's parameter or buffer name."""
audio_name = NameTable(AUDIO_NAMES)
"""Our name for a published tower tensor (relative to `transformer.audio.`), None if the table has none."""
OPTIONAL = frozenset({"positional_embedding"})
"""Tensors the encoder can rebuild itself: the fixed sinusoids (a checkpoint without them keeps ours)."""


def published_shapes(audio_config) -> dict[str, tuple[int, ...]]:
    """Every tower tensor of a published checkpoint, relative to `transformer.audio.`, with its shape."""
    c = audio_config
    width, mels, out = c.n_state, c.n_mels, c.output_dim
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, mels, 3),
        "conv1.bias": (width,),
        "conv2.weight": (width, width, 3),
        "conv2.bias": (width,),
        "positional_embedding": (c.n_ctx, width),
        "ln_post.weight": (width,),
        "ln_post.bias": (width,),
        "proj.weight": (out, width),
        "proj.bias": (out,),
        "audio_bos_eos_token.weight": (2, out),
    }
    for i in range(c.n_layer):
        block = f"blocks.{i}"
        for name in ("query", "key", "value", "out"):
            shapes[f"{block}.attn.{name}.weight"] = (width, width)
            if name != "key":
                shapes[f"{block}.attn.{name}.bias"] = (width,)
        for norm in ("attn_ln", "mlp_ln"):
            shapes[f"{block}.{norm}.weight"] = (width,)
            shapes[f"{block}.{norm}.bias"] = (width,)
        shapes[f"{block}.mlp.0.weight"] = (4 * width, width)
        shapes[f"{block}.mlp.0.bias"] = (4 * width,)
        shapes[f"{block}.mlp.2.weight"] = (width, 4 * width)
        shapes[f"{block}.mlp.2.bias"] = (width,)
    return shapes


def load_audio_weights(encoder: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copy published tower tensors into `encoder`; -> the set of our names that hold checkpoint (or, for
    OPTIONAL ones, rebuilt) values. Raises ValueError naming the first bad tensor and every missing one."""
    targets = dict(encoder.named_parameters()) | dict(encoder.named_buffers())
    loaded: set[str] = set()
    for published, tensor in weights:
        ours = audio_name(published)
        if ours is None or ours not in targets:
            raise ValueError(f"unexpected audio tower tensor 'transformer.audio.{published}' (no such published name)")
        if ours in loaded:
            raise ValueError(f"audio tower tensor 'transformer.audio.{published}' appears twice")
        target = targets[ours]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"audio tower tensor 'transformer.audio.{published}' has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor)  # casts to the model dtype
        loaded.add(ours)
    missing = sorted(set(targets) - loaded - OPTIONAL)
    if missing:
        shown = ", ".join(f"'transformer.audio.{name}'" for name in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise ValueError(f"checkpoint lacks audio tower tensors {shown}{more}")
    return loaded | (OPTIONAL & set(targets))
