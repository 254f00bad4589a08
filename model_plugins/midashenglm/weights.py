"""Published tensor names -> our module names, and a completeness check.

vLLM's loader exempts every unquantized linear layer from its missing-weight check,
so a checkpoint without, say, `decoder.model.layers.3.mlp.up_proj.weight` would
load silently with uninitialised memory. We check every expected tensor ourselves.
"""

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from vllm.model_executor.models.utils import WeightsMapper

# Published prefix -> our module prefix. Names below a prefix are the same on both sides.
PUBLISHED_PREFIXES = {
    "audio_encoder.": "encoder.",
    "audio_projector.net.0.": "projector.fc1.",
    "audio_projector.net.2.": "projector.fc2.",
    "decoder.": "language_model.",
}

PUBLISHED_WEIGHTS = WeightsMapper(
    orig_to_new_prefix=PUBLISHED_PREFIXES,
    # BatchNorm's step counter is training state. (The mel filterbank and window are
    # derived from config and are not checkpoint tensors.)
    orig_to_new_suffix={".num_batches_tracked": None},
)


def published_name(ours: str) -> str:
    for published, own in PUBLISHED_PREFIXES.items():
        if ours.startswith(own):
            return published + ours[len(own) :]
    return ours


def expected_tensors(model: nn.Module, packed_modules: Mapping[str, list[str]]) -> set[str]:
    """Our names of every tensor a checkpoint must provide; fused layers by their shards."""
    names = [name for name, _ in model.named_parameters()]
    names += [name for name in model.state_dict() if "running_" in name]  # BatchNorm statistics
    expected = set()
    for name in names:
        packed = next((p for p in packed_modules if f".{p}." in name), None)
        if packed is None:
            expected.add(name)
        else:
            expected.update(name.replace(f".{packed}.", f".{shard}.") for shard in packed_modules[packed])
    return expected


class TensorRecorder:
    """Passes checkpoint tensors through, remembering their (mapped) names."""

    def __init__(self, weights: Iterable[tuple[str, torch.Tensor]]):
        self.weights = weights
        self.seen: set[str] = set()

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.weights:
            mapped = PUBLISHED_WEIGHTS.map_name(name)
            if mapped is not None:
                self.seen.add(mapped)
            yield name, tensor

    def raise_if_missing(self, expected: set[str]) -> None:
        missing = sorted(published_name(name) for name in expected - self.seen)
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise ValueError(f"MiDashengLM checkpoint is missing {len(missing)} tensor(s): {shown}")
