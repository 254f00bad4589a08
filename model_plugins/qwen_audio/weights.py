"""Published QWen-v1 decoder tensor names -> vLLM's Qwen2 names, and the completeness check.

QWen-v1 fuses q, k, v (with bias) in `attn.c_attn`; its MLP is `c_proj(w1(x) * silu(w2(x)))`, so `w2` is the
gate and `w1` the up projection. vLLM's Qwen2 stacks q/k/v into `qkv_proj` and gate/up into `gate_up_proj` from
the unfused names, so the table maps to those and `c_attn` is split in three on the way.
"""

import re
from collections.abc import Iterable, Iterator

import torch

from .names import NameTable

AUDIO_PREFIX = "transformer.audio."
DECODER_NAMES: tuple[tuple[str, str], ...] = (
    (r"transformer\.wte\.weight", "model.embed_tokens.weight"),
    (r"transformer\.h\.(\d+)\.ln_1\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"model.layers.\1.self_attn.qkv.\2"),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"transformer\.h\.(\d+)\.ln_2\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"transformer\.h\.(\d+)\.mlp\.w1\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"transformer\.h\.(\d+)\.mlp\.w2\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.weight", r"model.layers.\1.mlp.down_proj.weight"),
    (r"transformer\.ln_f\.weight", "model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
)
"""Published decoder name (regex) -> the name vLLM's Qwen2ForCausalLM.load_weights takes; `qkv` is split below."""
decoder_name = NameTable(DECODER_NAMES)
IGNORED = re.compile(r"transformer\.h\.\d+\.attn\.(rotary_emb\.inv_freq|masked_bias|bias)$")
"""Derived buffers some exports carry; the published model ignores them on load too."""


def published_decoder_names(num_layers: int) -> set[str]:
    """Every decoder tensor a checkpoint must hold."""
    names = {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(num_layers):
        layer = f"transformer.h.{i}"
        names |= {f"{layer}.ln_1.weight", f"{layer}.ln_2.weight", f"{layer}.attn.c_proj.weight"}
        names |= {f"{layer}.attn.c_attn.weight", f"{layer}.attn.c_attn.bias"}
        names |= {f"{layer}.mlp.{m}.weight" for m in ("w1", "w2", "c_proj")}
    return names


def decoder_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Published decoder tensors renamed for vLLM's Qwen2, `c_attn` split into q, k, v (equal thirds: MHA)."""
    for name, tensor in weights:
        ours = decoder_name(name)
        if ours is None:
            raise ValueError(f"unexpected tensor {name!r} in a Qwen-Audio checkpoint")
        if ".self_attn.qkv." in ours:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                yield ours.replace(".qkv.", f".{part}."), chunk
        else:
            yield ours, tensor


class CheckpointSplit:
    """Routes checkpoint tensors to the audio tower or the decoder, remembering every published name seen."""

    def __init__(self, weights: Iterable[tuple[str, torch.Tensor]]):
        self.seen: set[str] = set()
        self.audio: list[tuple[str, torch.Tensor]] = []
        self._weights = weights

    def decoder(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The decoder's tensors (published names); audio ones are kept aside in `self.audio`."""
        for name, tensor in self._weights:
            if IGNORED.search(name):
                continue
            self.seen.add(name)
            if name.startswith(AUDIO_PREFIX):
                self.audio.append((name[len(AUDIO_PREFIX) :], tensor))
            else:
                yield name, tensor

    def raise_if_missing(self, expected: set[str]) -> None:
        missing = sorted(expected - self.seen)
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise ValueError(f"Qwen-Audio checkpoint is missing {len(missing)} tensor(s): {shown}")
