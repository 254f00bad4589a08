"""Weight loading by the published tensor names, through vLLM's own loader."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_plugins.midashenglm.weights import PUBLISHED_WEIGHTS
from tests.model_plugins.conftest import load_model


def edited_checkpoint(source, destination, edit):
    shutil.copytree(source, destination)
    tensors = load_file(destination / "model.safetensors")
    edit(tensors)
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def test_every_published_tensor_has_a_home(tiny_model, tiny_checkpoint):
    """Each published name maps to one of our parameters/buffers (decoder q/k/v and
    gate/up are stacked into vLLM's fused layers). Values are checked by behaviour in
    test_audio_tower.py: on CPU vLLM repacks linear weights after loading."""
    ours = set(dict(tiny_model.named_parameters())) | set(dict(tiny_model.named_buffers()))
    fused = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj"}
    fused |= {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
    for name in load_file(tiny_checkpoint / "model.safetensors"):
        mapped = PUBLISHED_WEIGHTS.map_name(name)
        if mapped is None:  # training-only state such as num_batches_tracked
            continue
        for part, stacked in fused.items():
            mapped = mapped.replace(f".{part}.", f".{stacked}.")
        assert mapped in ours, f"{name} -> {mapped} has no parameter"


@pytest.mark.parametrize(
    "name",
    [
        "audio_encoder.blocks.1.attn.qkv.weight",
        "audio_projector.net.2.bias",
        "decoder.model.layers.1.mlp.up_proj.weight",
    ],
)
def test_missing_tensor_fails_with_its_name(tiny_checkpoint, tmp_path, name):
    broken = edited_checkpoint(tiny_checkpoint, tmp_path / "broken", lambda t: t.pop(name))
    with pytest.raises(ValueError, match="checkpoint is missing 1 tensor") as error:
        load_model(broken)
    assert name in str(error.value)


def test_unexpected_tensor_fails_with_its_name(tiny_checkpoint, tmp_path):
    def add(tensors):
        tensors["audio_encoder.blocks.0.attn.rogue.weight"] = torch.zeros(2)

    broken = edited_checkpoint(tiny_checkpoint, tmp_path / "broken", add)
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.attn\.rogue"):
        load_model(broken)
