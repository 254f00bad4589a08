"""Qwen-Audio-Chat's published layout without the engine: the tokenizer against tiktoken itself, the config
and architecture selection, the span count the gateway uses, and a checkpoint that lacks a tensor."""

import base64
from pathlib import Path

import pytest
import tiktoken
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer

from alm.families import checkpoint_facts, detect
from model_plugins.qwen_audio.config import ARCHITECTURE, QWenAudioConfig
from model_plugins.qwen_audio.spans import clip_tokens
from model_plugins.qwen_audio.tiny import make
from model_plugins.qwen_audio.tokenizer import PATTERN, SPECIAL_TOKENS, register_with_transformers
from server.families.tokens import qwen_audio
from tests.model_plugins.conftest import load_model

PUBLISHED_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|extra_204|>": 151850,
                 "[[[AUDIO:modality]]]": 151851, "<|0.00|>": 151871, "<|30.00|>": 154871,
                 "<audio>": 155163, "</audio>": 155164}  # fmt: skip
"""From the published tokenization_qwen.py order (151,643 ranks, then the special tokens) and config.json."""
TEXTS = [
    "<|im_start|>user\nAudio 1:<audio></audio>\nwhat does the person say?<|im_end|>\n",
    "the dog barks loudly in the rain, 2024!",
    "Ünïcödé 漢字 \n\n  spaces\ttabs",
    "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make(tmp_path_factory.mktemp("qwen-audio") / "tiny-qwen-audio-chat", seed=0)


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path):
    register_with_transformers()
    return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)


def _tiktoken(checkpoint: Path) -> tiktoken.Encoding:
    """The published tokenizer's own construction: tiktoken over the ranks, special tokens after them."""
    ranks = {}
    for line in (checkpoint / "qwen.tiktoken").read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def test_special_tokens_have_their_published_ids(tokenizer) -> None:
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in PUBLISHED_IDS} == PUBLISHED_IDS
    assert len(tokenizer) == 155_165
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_encodes_and_decodes_like_tiktoken(tokenizer, checkpoint: Path, text: str) -> None:
    ids = _tiktoken(checkpoint).encode(text, allowed_special="all")
    assert tokenizer.encode(text) == ids
    assert tokenizer.decode(ids) == text


def test_chat_template_is_chatml_with_the_published_system_prompt(tokenizer) -> None:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_published_config_selects_our_architecture_without_editing_it(checkpoint: Path) -> None:
    register_with_transformers()
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    assert isinstance(config, QWenAudioConfig)
    assert config.architectures == [ARCHITECTURE]
    assert '"QWenLMHeadModel"' in (checkpoint / "config.json").read_text()
    text = config.text_config
    assert (text.num_key_value_heads, text.head_dim, text.max_position_embeddings) == (2, 64, 2048)
    assert text.intermediate_size == config.intermediate_size // 2  # each of w1, w2 is half of it
    # A text-only QWen config keeps its architecture: vLLM then says it is not supported.
    assert QWenAudioConfig(architectures=["QWenLMHeadModel"]).architectures == ["QWenLMHeadModel"]


def test_family_is_detected_only_with_an_audio_section(checkpoint: Path, tmp_path: Path) -> None:
    family = detect(checkpoint)
    assert family is not None and family.name == "qwen-audio-chat" and family.max_model_len == 2048
    assert checkpoint_facts(checkpoint) == {"family": "qwen-audio-chat"}
    (tmp_path / "config.json").write_text('{"architectures": ["QWenLMHeadModel"], "model_type": "qwen"}')
    assert detect(tmp_path) is None


@pytest.mark.parametrize("n_samples", [0, 1, 479, 480, 8000, 16000, 479_840, 480_000, 480_001, 720_000, 1_600_000])
def test_gateway_counts_the_spans_the_engine_makes(n_samples: int) -> None:
    assert qwen_audio(n_samples) == clip_tokens(n_samples)


@pytest.mark.parametrize("missing", ["transformer.h.1.mlp.w2.weight", "transformer.audio.blocks.0.attn.query.weight"])
def test_a_missing_tensor_fails_naming_it(checkpoint: Path, tmp_path: Path, missing: str) -> None:
    for path in checkpoint.iterdir():
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "model.safetensors").unlink()
    tensors = load_file(checkpoint / "model.safetensors")
    del tensors[missing]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=missing.replace(".", r"\.")):
        load_model(tmp_path, max_model_len=2048)
