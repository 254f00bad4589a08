"""Seeded random-weight MiDashengLM checkpoints in the published layout.

Real front-end parameters, a small encoder and decoder (decoder head_dim 64, which
vLLM's CPU attention supports) and a byte-level BPE tokenizer trained on the spot
with the Qwen2.5 chat tokens and the audio special tokens. These are the tests'
model and the model `alm serve` runs when given none.
"""

import json
import math
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system\nYou are a helpful language and speech assistant.<|im_end|>\n"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# Sizes: "tiny" for tests and the default server; "bench" is big enough that model
# compute, not Python overhead, dominates a CPU benchmark.
PRESETS = {
    "tiny": dict(enc_dim=64, enc_depth=2, enc_heads=2, hidden=128, layers=2, heads=2, kv_heads=1, ffn=256),
    "bench": dict(enc_dim=256, enc_depth=4, enc_heads=4, hidden=512, layers=4, heads=8, kv_heads=2, ffn=1408),
}

_CORPUS_WORDS = (  # noqa: SIM905 — a word corpus reads better as prose than as a 100-item list literal
    "the a an and of to in is was for on with as by at from this that it be are or not have "
    "sound audio music speech voice dog bark bird song rain wind car engine siren bell piano guitar "
    "drum crowd laugh applause water door knock phone ring alarm baby cry man woman child talk "
    "speaks sings plays loud quiet background noise caption describe what hear clip second minute "
    "hello world yes no please thank you question answer language model assistant transcribe"
).split()


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(_CORPUS_WORDS), (4000,), generator=generator).tolist()
    lines = [" ".join(_CORPUS_WORDS[i] for i in picks[k : k + 12]) for k in range(0, len(picks), 12)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines + _CORPUS_WORDS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=8192,
    )


def _config(size: dict, vocab_size: int, audio_token_id: int, eos_token_id: int) -> dict:
    return {
        "architectures": ["MiDashengLMModel"],
        "model_type": "midashenglm",
        "torch_dtype": "float32",
        "subsample_factor": 5,
        "audio_token_id": audio_token_id,
        "audio_encoder_config": {
            "model_type": "midashenglm_dasheng_encoder",
            "embed_dim": size["enc_dim"],
            "depth": size["enc_depth"],
            "num_heads": size["enc_heads"],
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "init_values": 0.5,
            "patch_size": [64, 4],
            "patch_stride": [64, 4],
            "input_channels": 1,
            "target_length": 1008,
            "sample_rate": 16000,
            "n_fft": 512,
            "win_length": 512,
            "hop_length": 160,
            "n_mels": 64,
            "f_min": 0.0,
            "f_max": 8000.0,
            "center": True,
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "vocab_size": vocab_size,
            "hidden_size": size["hidden"],
            "intermediate_size": size["ffn"],
            "num_hidden_layers": size["layers"],
            "num_attention_heads": size["heads"],
            "num_key_value_heads": size["kv_heads"],
            "head_dim": 64,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
            "eos_token_id": eos_token_id,
        },
    }


def _weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the published layout, seeded; linear weights ~ N(0, 1/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    enc, text = config["audio_encoder_config"], config["text_config"]
    d, h = enc["embed_dim"], text["hidden_size"]
    kv = text["num_key_value_heads"] * text["head_dim"]
    q = text["num_attention_heads"] * text["head_dim"]
    tensors: dict[str, torch.Tensor] = {}

    def normal(name: str, *shape: int, std: float | None = None) -> None:
        scale = std if std is not None else 1.0 / math.sqrt(shape[-1])
        tensors[name] = torch.randn(*shape, generator=generator) * scale

    def layer_norm(name: str, dim: int) -> None:
        tensors[f"{name}.weight"] = torch.ones(dim)
        tensors[f"{name}.bias"] = torch.zeros(dim)

    def linear(name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
        normal(f"{name}.weight", out_dim, in_dim)
        if bias:
            normal(f"{name}.bias", out_dim, std=0.02)

    n_mels = enc["n_mels"]
    tensors["audio_encoder.init_bn.weight"] = torch.ones(n_mels)
    tensors["audio_encoder.init_bn.bias"] = torch.zeros(n_mels)
    tensors["audio_encoder.init_bn.running_mean"] = torch.full((n_mels,), -40.0)  # dB
    tensors["audio_encoder.init_bn.running_var"] = torch.full((n_mels,), 400.0)
    tensors["audio_encoder.init_bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    normal("audio_encoder.patch_embed.proj.weight", d, 1, *enc["patch_size"], std=1.0 / math.sqrt(n_mels * 4))
    normal("audio_encoder.patch_embed.proj.bias", d, std=0.02)
    normal("audio_encoder.time_pos_embed", 1, d, 1, enc["target_length"] // 4, std=0.02)
    normal("audio_encoder.freq_pos_embed", 1, d, n_mels // enc["patch_size"][0], 1, std=0.02)
    for i in range(enc["depth"]):
        block = f"audio_encoder.blocks.{i}"
        layer_norm(f"{block}.norm1", d)
        linear(f"{block}.attn.qkv", 3 * d, d)
        linear(f"{block}.attn.proj", d, d)
        layer_norm(f"{block}.norm2", d)
        linear(f"{block}.mlp.fc1", int(4 * d), d)
        linear(f"{block}.mlp.fc2", d, int(4 * d))
        tensors[f"{block}.ls1.gamma"] = torch.full((d,), enc["init_values"])
        tensors[f"{block}.ls2.gamma"] = torch.full((d,), enc["init_values"])
    layer_norm("audio_encoder.norm", d)
    linear("audio_projector.net.0", h, d * config["subsample_factor"])
    linear("audio_projector.net.2", h, h)

    normal("decoder.model.embed_tokens.weight", text["vocab_size"], h, std=1.0)
    for i in range(text["num_hidden_layers"]):
        layer = f"decoder.model.layers.{i}"
        linear(f"{layer}.self_attn.q_proj", q, h)
        linear(f"{layer}.self_attn.k_proj", kv, h)
        linear(f"{layer}.self_attn.v_proj", kv, h)
        linear(f"{layer}.self_attn.o_proj", h, q, bias=False)
        linear(f"{layer}.mlp.gate_proj", text["intermediate_size"], h, bias=False)
        linear(f"{layer}.mlp.up_proj", text["intermediate_size"], h, bias=False)
        linear(f"{layer}.mlp.down_proj", h, text["intermediate_size"], bias=False)
        tensors[f"{layer}.input_layernorm.weight"] = torch.ones(h)
        tensors[f"{layer}.post_attention_layernorm.weight"] = torch.ones(h)
    tensors["decoder.model.norm.weight"] = torch.ones(h)
    normal("decoder.lm_head.weight", text["vocab_size"], h, std=4.0 / math.sqrt(h))
    return tensors


def make_tiny_checkpoint(out_dir: Path | str, *, preset: str = "tiny", seed: int = 0) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=1024)
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded like real checkpoints
    config = _config(
        PRESETS[preset],
        vocab_size,
        audio_token_id=cast(int, tokenizer.convert_tokens_to_ids("<|AUDIO|>")),  # one token in, one id out
        eos_token_id=tokenizer.eos_token_id,
    )
    config["eos_token_id"] = tokenizer.eos_token_id
    tokenizer.save_pretrained(out_dir)
    save_file(_weights(config, seed), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "do_sample": False}, indent=2)
    )
    # config.json last: its presence marks a complete checkpoint.
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def ensure_tiny_checkpoint(out_dir: Path | str, *, preset: str = "tiny") -> Path:
    """The checkpoint at `out_dir`, made (seed 0) if absent."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        make_tiny_checkpoint(out_dir, preset=preset)
    return out_dir
