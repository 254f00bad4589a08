"""Tiny Qwen3-Omni-30B-A3B: the Thinker (audio tower, vision tower with deepstack, mixture-of-experts decoder).

Published layout of the text-out checkpoints (``Qwen3OmniMoeForConditionalGeneration`` with
``enable_audio_output`` false, as the Thinking and Captioner releases): tensors ``thinker.*``; one
preprocessor_config.json; the Qwen3 tokenizer with ``<|audio_start|><|audio_pad|><|audio_end|>``. transformers 5's
config lacks keys vLLM reads (``vision_config.image_size``, ``vision_config.apply_vit_abs_pos_embed``,
``text_config.tie_word_embeddings``): they are written as the published config has them.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

from alm.tiny.checkpoint import build, patch_json, save_published, write_json
from alm.tiny.omni import media_template, write_preprocessor
from alm.tiny.tokenizer import qwen2_tokenizer, token_ids

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>",
    "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
]  # fmt: skip
"""Published order (the real vocabulary has the tool-call tokens between the vision and audio ones)."""
NAMED = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
         "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
         "vision_eos_token": "<|vision_end|>"}  # fmt: skip
CHAT_TEMPLATE = media_template(
    system=None, audio="<|audio_start|><|audio_pad|><|audio_end|>",
    image="<|vision_start|><|image_pad|><|vision_end|>", video="<|vision_start|><|video_pad|><|vision_end|>",
)  # fmt: skip
MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [12, 10, 10], "interleaved": True}
"""The published [24, 20, 20] (head_dim 128) scaled to head_dim 64."""
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def make(out_dir: Path, seed: int = 0) -> Path:
    tokenizer = qwen2_tokenizer(SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                named=NAMED)  # fmt: skip
    ids = token_ids(tokenizer, [*SPECIAL_TOKENS, "user"])
    hidden = 128
    config = Qwen3OmniMoeConfig(
        thinker_config={
            "audio_config": {"d_model": hidden, "encoder_layers": 2, "encoder_attention_heads": 2,
                             "encoder_ffn_dim": 256, "num_mel_bins": 128, "output_dim": hidden,
                             "downsample_hidden_size": 32},
            "vision_config": {"depth": 2, "hidden_size": hidden, "intermediate_size": 256, "num_heads": 2,
                              "out_hidden_size": hidden, "deepstack_visual_indexes": [1]},
            "text_config": {"vocab_size": -(-len(tokenizer) // 64) * 64, "hidden_size": hidden,
                            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "num_key_value_heads": 1, "head_dim": 64, "num_experts": 4, "num_experts_per_tok": 2,
                            "moe_intermediate_size": 64, "rope_parameters": MROPE},
            "audio_token_id": ids["<|audio_pad|>"], "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"], "audio_start_token_id": ids["<|audio_start|>"],
            "vision_start_token_id": ids["<|vision_start|>"],  # read by transformers' rope index, not in its config
            "user_token_id": ids["user"],
        },
        enable_audio_output=False, im_start_token_id=ids["<|im_start|>"], im_end_token_id=ids["<|im_end|>"],
    )  # fmt: skip
    model = build(lambda: Qwen3OmniMoeForConditionalGeneration(config), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_published(model, out_dir, {})

    def published_keys(c: dict) -> None:
        c["thinker_config"]["vision_config"].setdefault("image_size", 768)
        c["thinker_config"]["vision_config"].setdefault("apply_vit_abs_pos_embed", True)
        c["thinker_config"]["text_config"].setdefault("tie_word_embeddings", False)

    patch_json(out_dir / "config.json", published_keys)
    tokenizer.save_pretrained(out_dir)
    write_preprocessor(out_dir, processor_class="Qwen3OmniMoeProcessor", chunk_length=300, patch_size=16)
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    write_json(out_dir / "generation_config.json", {"eos_token_id": eos, "pad_token_id": eos[1], **SAMPLING})
    return out_dir
