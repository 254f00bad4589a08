"""What every tiny checkpoint maker shares: seeded construction, published tensor names, the files around them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel


def build(model_factory: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    """The model with transformers' own initialisation, drawn from a generator seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_factory().eval()


def save_published(model: PreTrainedModel, out_dir: Path, renames: Mapping[str, str]) -> list[str]:
    """``save_pretrained`` of the weights, then tensor-name prefixes renamed to the published layout (transformers
    5 saves some models under its own internal names). Returns the tensor names as written."""
    model.save_pretrained(out_dir, safe_serialization=True)
    names: list[str] = []
    for path in sorted(out_dir.glob("*.safetensors")):
        tensors = load_file(path)
        renamed = {_rename(name, renames): tensor for name, tensor in tensors.items()}
        save_file(renamed, path, metadata={"format": "pt"})
        names += renamed
    index = out_dir / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_rename(k, renames): v for k, v in data["weight_map"].items()}
        write_json(index, data)
    return names


def _rename(name: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def patch_json(path: Path, update: Callable[[dict], None]) -> None:
    """Read ``path``, let ``update`` change the object in place, write it back."""
    data = json.loads(path.read_text())
    update(data)
    write_json(path, data)
