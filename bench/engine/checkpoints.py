"""Bench checkpoints: tiny.py's presets, plus bench-only sizes written the same way.

"tiny" and "bench" come from model_plugins.midashenglm.tiny unchanged. "large" is defined
here (not a project preset): the same encoder as "bench" with a ~90M-parameter decoder
(hidden 1024 x 8 layers), whose fp32 weights (~360 MB) no longer fit in the CPU caches, so
batch-1 decoding pays a full weight read per token, as a real 7B model does.
"""

import json
from pathlib import Path

from model_plugins.midashenglm import tiny

BENCH_SIZES = {
    "large": dict(enc_dim=256, enc_depth=4, enc_heads=4, hidden=1024, layers=8, heads=16, kv_heads=2, ffn=2816),
}


def make_checkpoint(out_dir: Path, preset: str, seed: int = 0) -> Path:
    """config.json written last marks a complete checkpoint; existing ones are reused."""
    if (out_dir / "config.json").exists():
        return out_dir
    if preset in tiny.PRESETS:
        return tiny.make_tiny_checkpoint(out_dir, preset=preset, seed=seed)
    # Same steps as tiny.make_tiny_checkpoint, with a bench-only size table.
    size = BENCH_SIZES[preset]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny._train_tokenizer(vocab_size=1024)
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = tiny._config(
        size, vocab_size,
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"), eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config["eos_token_id"] = tokenizer.eos_token_id
    tokenizer.save_pretrained(out_dir)
    tiny.save_file(tiny._weights(config, seed), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "do_sample": False}, indent=2)
    )
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def describe(path: Path) -> str:
    config = json.loads((path / "config.json").read_text())
    enc, text = config["audio_encoder_config"], config["text_config"]
    return (
        f"encoder {enc['embed_dim']}x{enc['depth']} layers, decoder hidden {text['hidden_size']}x"
        f"{text['num_hidden_layers']} layers (ffn {text['intermediate_size']}, head_dim {text['head_dim']})"
    )
