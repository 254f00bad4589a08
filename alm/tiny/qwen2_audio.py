"""Tiny Qwen2-Audio-7B-Instruct: Whisper-style encoder (128 mel bins, 30 s windows) + projector + Qwen2 decoder.

Published layout: ``config.json`` (``Qwen2AudioForConditionalGeneration``), tensors ``audio_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``; the Whisper feature extractor
in ``preprocessor_config.json``; the tokenizer with ``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>`` and the
model's chat template; ``generation_config.json`` with its sampling defaults.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from alm.tiny.checkpoint import build, save_published, write_json
from alm.tiny.tokenizer import qwen2_tokenizer, token_ids

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
RENAMES = {"language_model.model.model.": "language_model.model."}
"""transformers 5 saves the decoder one ``model.`` too deep; the published checkpoint (and vLLM) have it once."""
SAMPLING = {"do_sample": True, "top_k": 20, "top_p": 0.5, "temperature": 0.7, "repetition_penalty": 1.1}
"""The published generation_config.json's defaults (vLLM's OpenAI server applies them)."""
FEATURES = {"feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400,
            "padding_value": 0.0, "return_attention_mask": True}  # fmt: skip


def make(out_dir: Path, seed: int = 0) -> Path:
    tokenizer = qwen2_tokenizer(
        SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>",
        chat_template=Qwen2AudioProcessor.default_chat_template.fget(None),  # type: ignore[attr-defined]  # a property
    )  # fmt: skip
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    config = Qwen2AudioConfig(
        audio_config={
            "d_model": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 256,
            "num_mel_bins": 128, "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2", "vocab_size": -(-len(tokenizer) // 64) * 64, "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 64, "max_position_embeddings": 8192, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
        },
        audio_token_index=ids["<|AUDIO|>"],
    )  # fmt: skip
    model = build(lambda: Qwen2AudioForConditionalGeneration(config), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_published(model, out_dir, RENAMES)
    tokenizer.save_pretrained(out_dir)
    features = WhisperFeatureExtractor(**FEATURES).to_dict()
    features["processor_class"] = "Qwen2AudioProcessor"
    write_json(out_dir / "preprocessor_config.json", features)
    eos = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    write_json(out_dir / "generation_config.json",
               {"chat_format": "chatml", "eos_token_id": eos, "pad_token_id": eos[0], **SAMPLING})  # fmt: skip
    return out_dir
