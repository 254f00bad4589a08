"""The tiny Qwen checkpoints are in their family's published layout (no engine needed): what vLLM's loaders,
processors and chat renderer read must be where the real checkpoints have it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from alm.families import detect, engine_env, omni_extras_dir
from alm.tiny import FAMILIES, make

LAYOUT = {
    # family: (architecture, tensor prefixes, audio token, config path to its id, named tokenizer attributes)
    "qwen2-audio": ("Qwen2AudioForConditionalGeneration",
                    {"audio_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head."},
                    "<|AUDIO|>", ("audio_token_index",), {}),
    "qwen2.5-omni": ("Qwen2_5OmniModel", {"thinker.", "talker.", "token2wav."}, "<|AUDIO|>",
                     ("thinker_config", "audio_token_index"),
                     {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                      "vision_bos_token": "<|vision_bos|>"}),
    "qwen3-omni": ("Qwen3OmniMoeForConditionalGeneration", {"thinker."}, "<|audio_pad|>",
                   ("thinker_config", "audio_token_id"),
                   {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                    "image_token": "<|image_pad|>"}),
}  # fmt: skip
FILES = {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja"}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(LAYOUT))
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family: str = request.param
    return family, make(family, tmp_path_factory.mktemp("tiny") / family, seed=0)


def test_files_config_and_tensor_names(made: tuple[str, Path]) -> None:
    family, checkpoint = made
    architecture, prefixes, audio_token, id_path, named = LAYOUT[family]
    assert {p.name for p in checkpoint.iterdir()} == FILES | ({"spk_dict.pt"} if family == "qwen2.5-omni" else set())
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert detect(checkpoint) is not None and detect(checkpoint).name == family  # type: ignore[union-attr]
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert {next(p for p in prefixes if n.startswith(p)) for n in names if any(map(n.startswith, prefixes))} == prefixes
    assert [n for n in names if not any(map(n.startswith, prefixes))] == []
    assert not any(".model.model." in n for n in names)  # transformers 5's save-time name, not the published one
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    audio_id = config
    for key in id_path:
        audio_id = audio_id[key]
    assert tokenizer.convert_tokens_to_ids(audio_token) == audio_id
    assert {name: getattr(tokenizer, name, None) for name in named} == named


def test_chat_template_renders_the_audio_placeholder(made: tuple[str, Path]) -> None:
    family, checkpoint = made
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is it?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[arg-type]  # parts
    assert isinstance(text, str)
    assert text.count(LAYOUT[family][2]) == 1  # vLLM's OpenAI server hands audio parts over as {"type": "audio"}
    assert text.endswith("<|im_start|>assistant\n")


def test_seeded() -> None:
    assert set(FAMILIES) == {"midashenglm", "qwen-audio-chat", *LAYOUT}
    with pytest.raises(ValueError, match="unknown family 'qwen9'"):
        make("qwen9", "/nonexistent")


def test_engine_env(made: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Omni engines on the CPU build get the patched torchvision, ahead of the caller's PYTHONPATH."""
    family, checkpoint = made
    monkeypatch.setenv("PYTHONPATH", "/caller/path")
    assert engine_env(checkpoint, cpu=False) == {}
    env = engine_env(checkpoint, cpu=True)
    if family == "qwen2-audio":
        assert env == {}
        return
    extras = omni_extras_dir()
    assert env == {"PYTHONPATH": f"{extras}{os.pathsep}/caller/path"}
    assert (extras / "torchvision" / "_meta_registrations.py").read_text().count("_alm_fake_if_ops(") == 3
