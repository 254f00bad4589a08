"""Seeded random-weight Qwen-Audio-Chat checkpoints in the published layout (`alm make-tiny --family
qwen-audio-chat`).

Files as published: `config.json` (`QWenLMHeadModel`, model_type `qwen`, an `audio` section, the `auto_map` that
our plugin makes unnecessary), `qwen.tiktoken`, `tokenizer_config.json` (`QWenTokenizer` + `auto_map`),
`generation_config.json`, and `model.safetensors` with the published tensor names (`transformer.*`, `lm_head`).

The vocabulary is padded so every special token keeps its real id (`<|endoftext|>` 151643, `<|im_start|>` 151644,
`<|im_end|>` 151645, `<audio>` 155163, `</audio>` 155164): 256 byte tokens, ~700 merges learned from a small word
list, then filler ranks up to 151,642 made of bytes that never occur in UTF-8 text (0xFF 0xFE + 3 index bytes),
so no text ever encodes to them. The embedding therefore has the published 155,947 rows; the model stays small
(decoder width 128, 2 layers, head_dim 64 — vLLM's CPU attention refuses head_dim 16; audio tower width 64).
"""

import base64
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from .tokenizer import ENDOFTEXT, IM_END, IM_START, SPECIAL_TOKENS, VOCAB_FILE

PUBLISHED_RANKS = 151_643
"""Ranks in the published qwen.tiktoken: the id of `<|endoftext|>`."""
VOCAB_SIZE = 155_947
"""The published config's (padded) embedding rows."""
FILLER = b"\xff\xfe"
"""Prefix of the filler ranks: bytes no UTF-8 text contains, so no text encodes to a filler."""
SIZE = dict(hidden=128, heads=2, layers=2, intermediate=512, n_state=64, n_head=2, n_layer=2)
_WORDS = (  # noqa: SIM905 — a word list reads better as prose
    "the a an and of to in is was for on with as by at from this that it be are or not have what "
    "sound audio music speech voice dog bark bird song rain wind car engine siren bell piano guitar drum "
    "crowd laugh applause water door knock phone ring alarm baby cry man woman child talk person say says "
    "speaks sings plays loud quiet background noise caption describe hear clip second minute tone steady "
    "hello world yes no please thank you question answer language model assistant helpful transcribe "
    "system user Audio"
).split()


def _ranks(seed: int) -> list[bytes]:
    """Tokens in rank order: bytes, merges learned from `_WORDS`, fillers up to PUBLISHED_RANKS."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(_WORDS), (6000,), generator=generator).tolist()
    lines = [" ".join(_WORDS[i] for i in picks[k : k + 12]) for k in range(0, len(picks), 12)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(lines + _WORDS, trainer=trainer)
    unicode_to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    merges = json.loads(bpe.to_str())["model"]["merges"]
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for left, right in (m.split(" ") if isinstance(m, str) else m for m in merges):
        token = bytes(unicode_to_byte[ch] for ch in left + right)
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    tokens += [FILLER + i.to_bytes(3, "big") for i in range(PUBLISHED_RANKS - len(tokens))]
    return tokens


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table (what byte-level BPE writes its merges in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _config(ids: dict[str, int]) -> dict:
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": "qwen",
        "hidden_size": SIZE["hidden"],
        "num_attention_heads": SIZE["heads"],
        "num_hidden_layers": SIZE["layers"],
        "kv_channels": SIZE["hidden"] // SIZE["heads"],
        "intermediate_size": SIZE["intermediate"],
        "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 8192,
        "seq_length": 2048,
        "no_bias": True,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer",
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
        "vocab_size": VOCAB_SIZE,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "audio": {
            "n_mels": 80,
            "n_ctx": 1500,
            "n_state": SIZE["n_state"],
            "n_head": SIZE["n_head"],
            "n_layer": SIZE["n_layer"],
            "output_dim": SIZE["hidden"],
            "avg_pool": True,
            "add_audio_bos_eos_token": True,
            "audio_start_id": ids["<audio>"],
        },
    }


def _decoder_weights(config: dict, generator: torch.Generator, fillers: range) -> dict[str, torch.Tensor]:
    """Every decoder tensor; the output rows of the filler ranks are zero, so greedy decoding (random logits of
    +-4 sigma on every other row) picks real tokens and text comes out readable, never filler bytes."""
    h, branch = config["hidden_size"], config["intermediate_size"] // 2
    tensors: dict[str, torch.Tensor] = {}

    def normal(name: str, *shape: int, std: float | None = None) -> None:
        tensors[name] = torch.randn(*shape, generator=generator) * (std or 1.0 / math.sqrt(shape[-1]))

    normal("transformer.wte.weight", config["vocab_size"], h, std=1.0)
    for i in range(config["num_hidden_layers"]):
        layer = f"transformer.h.{i}"
        tensors[f"{layer}.ln_1.weight"] = torch.ones(h)
        normal(f"{layer}.attn.c_attn.weight", 3 * h, h)
        normal(f"{layer}.attn.c_attn.bias", 3 * h, std=0.02)
        normal(f"{layer}.attn.c_proj.weight", h, h)
        tensors[f"{layer}.ln_2.weight"] = torch.ones(h)
        normal(f"{layer}.mlp.w1.weight", branch, h)
        normal(f"{layer}.mlp.w2.weight", branch, h)
        normal(f"{layer}.mlp.c_proj.weight", h, branch)
    tensors["transformer.ln_f.weight"] = torch.ones(h)
    normal("lm_head.weight", config["vocab_size"], h, std=4.0 / math.sqrt(h))
    tensors["lm_head.weight"][fillers.start : fillers.stop] = 0.0
    return tensors


def _audio_weights(config: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every published `transformer.audio.*` tensor (QB's table), seeded: norms at 1/0, the rest ~N(0, 1/fan_in)."""
    from .audio_weights import published_shapes
    from .config import QWenAudioEncoderConfig

    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(published_shapes(QWenAudioEncoderConfig(**config["audio"])).items()):
        full = f"transformer.audio.{name}"
        owner = name.split(".")[-2] if "." in name else ""
        if owner.startswith("ln_") or owner.endswith("_ln"):
            tensors[full] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name == "positional_embedding":
            tensors[full] = _sinusoids(*shape)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            std = 0.02 if len(shape) == 1 or name.startswith("audio_bos_eos") else 1.0 / math.sqrt(fan_in)
            tensors[full] = torch.randn(*shape, generator=generator) * std
    return tensors


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed positional table (the published tower registers it as a buffer)."""
    step = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def make(out_dir: Path | str, seed: int = 0) -> Path:
    """Write the checkpoint into `out_dir`; config.json last (its presence marks a complete checkpoint)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _ranks(seed)
    fillers = range(next(i for i, token in enumerate(ranks) if token.startswith(FILLER)), PUBLISHED_RANKS)
    with open(out_dir / VOCAB_FILE, "w", encoding="utf-8") as f:
        for rank, token in enumerate(ranks):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    ids = {token: PUBLISHED_RANKS + i for i, token in enumerate(SPECIAL_TOKENS)}
    _write(out_dir / "tokenizer_config.json", {
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    })  # fmt: skip
    config = _config(ids)
    generator = torch.Generator().manual_seed(seed)
    tensors = _decoder_weights(config, generator, fillers) | _audio_weights(config, generator)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    # The published chat generation config stops on <|endoftext|>; its chat() also stops on <|im_end|> and
    # <|im_start|>, which vLLM only does when they are eos ids here.
    _write(out_dir / "generation_config.json", {
        "chat_format": "chatml", "eos_token_id": [ids[ENDOFTEXT], ids[IM_END], ids[IM_START]],
        "pad_token_id": ids[ENDOFTEXT], "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.5,
    })  # fmt: skip
    _write(out_dir / "config.json", config)
    return out_dir


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
