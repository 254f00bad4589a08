"""Tiny Qwen2.5-Omni-7B: the whole published model (Thinker with audio and vision towers, Talker, Token2Wav).

Published layout: ``config.json`` (``Qwen2_5OmniModel``, ``enable_audio_output``), tensors ``thinker.*``,
``talker.*``, ``token2wav.*`` (vLLM serves the Thinker and skips the other two); one preprocessor_config.json
(Whisper features with ``chunk_length`` 300, Qwen2-VL image fields); ``spk_dict.pt`` (the voices); the tokenizer
with the audio and vision tokens and the chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from alm.tiny.checkpoint import build, patch_json, save_published, write_json
from alm.tiny.omni import media_template, write_preprocessor
from alm.tiny.tokenizer import qwen2_tokenizer, token_ids

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>",
]  # fmt: skip
"""Published order (ids 151643…151656 in the real vocabulary)."""
NAMED = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
         "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
         "vision_eos_token": "<|vision_eos|>"}  # fmt: skip
CHAT_TEMPLATE = media_template(
    system="You are a helpful assistant.", audio="<|audio_bos|><|AUDIO|><|audio_eos|>",
    image="<|vision_bos|><|IMAGE|><|vision_eos|>", video="<|vision_bos|><|VIDEO|><|vision_eos|>",
)  # fmt: skip
MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}
"""Sections sum to head_dim / 2 (the published [16, 24, 24] for head_dim 128, scaled to 64)."""
RENAMES: dict[str, str] = {}
"""transformers 5 already saves the published names here."""


SPEAKERS = ("Chelsie", "Ethan")
"""The published voices; transformers' from_pretrained refuses a checkpoint without its spk_dict.pt."""


def _write_speakers(path: Path, *, enc_emb_dim: int, mel_dim: int, bos_token: int, seed: int) -> None:
    """spk_dict.pt as published: per voice the Token2Wav speaker embedding, a reference mel and the Talker's
    text bos token (seeded random here)."""
    generator = torch.Generator().manual_seed(seed)
    speakers = {
        name: {"cond": torch.randn(1, enc_emb_dim, generator=generator),
               "ref_mel": torch.randn(1, 300, mel_dim, generator=generator), "bos_token": bos_token}
        for name in SPEAKERS
    }  # fmt: skip
    torch.save(speakers, path)


def make(out_dir: Path, seed: int = 0) -> Path:
    tokenizer = qwen2_tokenizer(SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                named=NAMED)  # fmt: skip
    ids = token_ids(tokenizer, [*SPECIAL_TOKENS, "user"])
    hidden = 128
    tokens = {
        "audio_token_index": ids["<|AUDIO|>"], "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"], "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"],
    }  # fmt: skip
    vision_marks = {"vision_start_token_id": ids["<|vision_bos|>"], "vision_end_token_id": ids["<|vision_eos|>"]}
    config = Qwen2_5OmniConfig(
        thinker_config={
            "audio_config": {"d_model": hidden, "encoder_layers": 2, "encoder_attention_heads": 2,
                             "encoder_ffn_dim": 256, "num_mel_bins": 128, "output_dim": hidden, "n_window": 100},
            "vision_config": {"depth": 2, "hidden_size": hidden, "intermediate_size": 256, "num_heads": 2,
                              "out_hidden_size": hidden, "fullatt_block_indexes": [1]},
            "text_config": {"vocab_size": -(-len(tokenizer) // 64) * 64, "hidden_size": hidden,
                            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "num_key_value_heads": 1, "rope_parameters": MROPE, "tie_word_embeddings": False},
            "user_token_id": ids["user"], **tokens,
            "vision_start_token_id": ids["<|vision_bos|>"],  # read by transformers' rope index, not in its config
        },
        talker_config={
            "vocab_size": 8448, "embedding_size": hidden, "hidden_size": hidden, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
            "rope_parameters": MROPE, **tokens, **vision_marks,
            "tts_text_start_token_id": ids["<|endoftext|>"], "tts_text_end_token_id": ids["<|endoftext|>"],
            "tts_text_pad_token_id": ids["<|endoftext|>"],
        },
        token2wav_config={
            "dit_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 32,
                           "emb_dim": 32, "enc_emb_dim": 32, "enc_dim": 32, "enc_channels": [32, 32, 32, 32, 96],
                           "enc_attention_channels": 16, "enc_se_channels": 16, "look_ahead_layers": [1],
                           "look_backward_layers": [0]},
            "bigvgan_config": {"upsample_initial_channel": 32},
        },
        enable_audio_output=True,
    )  # fmt: skip
    model = build(lambda: Qwen2_5OmniForConditionalGeneration(config), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_published(model, out_dir, RENAMES)
    patch_json(out_dir / "config.json", lambda c: c.update(architectures=["Qwen2_5OmniModel"]))
    _write_speakers(out_dir / "spk_dict.pt", enc_emb_dim=32, mel_dim=80, bos_token=ids["<|endoftext|>"], seed=seed)
    tokenizer.save_pretrained(out_dir)
    write_preprocessor(out_dir, processor_class="Qwen2_5OmniProcessor", chunk_length=300, patch_size=14)
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    write_json(out_dir / "generation_config.json", {"eos_token_id": eos, "pad_token_id": eos[1]})
    return out_dir
