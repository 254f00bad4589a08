"""Placeholder expansion: each clip's <|AUDIO|> becomes exactly the encoder's token count."""

import numpy as np
import pytest
import torch
from vllm.multimodal import MULTIMODAL_REGISTRY

from model_plugins.midashenglm.processing import AUDIO_PLACEHOLDER, AUDIO_TOKEN
from tests.model_plugins.conftest import SAMPLE_RATE, engine_config, tone

# seconds -> ((n_samples + 512 - 512) // 160 + 1) // 4 // 5, worked out by hand.
EXPECTED_TOKENS = {0.2: 1, 1.0: 5, 9.99: 50, 10.0: 50, 10.08: 50, 30.0: 150, 61.0: 305}


def published_formula(n_samples: int) -> int:
    return ((n_samples + 512 - 512) // 160 + 1) // 4 // 5


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return MULTIMODAL_REGISTRY.create_processor(engine_config(tiny_checkpoint).model_config)


def process(processor, text: str, clips: list[np.ndarray]):
    items = processor.info.parse_mm_data({"audio": [(clip, SAMPLE_RATE) for clip in clips]} if clips else {})
    return processor(text, items)


def audio_token_id(processor) -> int:
    return processor.info.get_tokenizer().get_vocab()[AUDIO_TOKEN]


@pytest.mark.parametrize("seconds", sorted(EXPECTED_TOKENS))
def test_placeholder_count_follows_published_formula(processor, seconds):
    clip = tone(seconds)
    assert published_formula(clip.size) == EXPECTED_TOKENS[seconds]
    out = process(processor, f"{AUDIO_PLACEHOLDER}what do you hear?", [clip])
    assert out["prompt_token_ids"].count(audio_token_id(processor)) == EXPECTED_TOKENS[seconds]
    (placeholder,) = out["mm_placeholders"]["audio"]
    assert placeholder.length == EXPECTED_TOKENS[seconds]


def test_encoder_output_length_equals_placeholder_count(tiny_model):
    seconds = sorted(EXPECTED_TOKENS)
    with torch.inference_mode():
        embeddings = tiny_model.embed_audio([torch.from_numpy(tone(s)) for s in seconds])
    assert [e.shape[0] for e in embeddings] == [EXPECTED_TOKENS[s] for s in seconds]
    assert all(torch.isfinite(e).all() for e in embeddings)


def test_several_clips_in_one_prompt(processor):
    out = process(processor, f"{AUDIO_PLACEHOLDER}{AUDIO_PLACEHOLDER}compare", [tone(1.0), tone(30.0)])
    assert [p.length for p in out["mm_placeholders"]["audio"]] == [5, 150]
    # Every placeholder position is embedding: no per-clip is_embed mask (select_token_id built a tensor per clip).
    assert all(p.is_embed is None and p.get_num_embeds() == p.length for p in out["mm_placeholders"]["audio"])
    assert out["prompt_token_ids"].count(audio_token_id(processor)) == 155


def test_text_only_prompt_is_untouched(processor):
    tokenizer = processor.info.get_tokenizer()
    out = process(processor, "hello world", [])
    assert out["prompt_token_ids"] == tokenizer.encode("hello world")
    assert not out["mm_placeholders"]


def test_clip_shorter_than_one_token_is_padded_to_one(processor):
    out = process(processor, AUDIO_PLACEHOLDER, [tone(0.05)])
    assert out["mm_placeholders"]["audio"][0].length == 1


def test_encoder_cache_is_sized_for_the_longest_accepted_clip(processor):
    config = processor.info.get_hf_config()
    assert config.max_audio_seconds >= 600
    longest = int(config.max_audio_seconds * SAMPLE_RATE)
    assert processor.info.get_mm_max_tokens_per_item(8192, {"audio": 1}) == {"audio": published_formula(longest)}


@pytest.mark.parametrize(
    "clip, message",
    [
        (np.zeros(0, dtype=np.float32), "has no samples"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN or infinite"),
        (np.zeros(601 * SAMPLE_RATE, dtype=np.float32), "serves clips up to 600 s"),
    ],
    ids=["empty", "nan", "over-max"],
)
def test_bad_clips_are_rejected_with_a_clear_message(processor, clip, message):
    with pytest.raises(ValueError, match=message):
        process(processor, AUDIO_PLACEHOLDER, [clip])


def test_audio_token_id_comes_from_the_config_and_matches_the_tokenizer(processor):
    config = processor.info.get_hf_config()
    assert config.audio_token_id is not None
    assert processor.info.audio_token_id() == config.audio_token_id == audio_token_id(processor)


def test_prompt_updates_read_lengths_from_the_parsed_clips_not_the_processed_tensors(processor, monkeypatch):
    """Placeholder expansion must not stack every waveform (MultiModalKwargsItems.get_data)."""
    from vllm.multimodal.inputs import MultiModalKwargsItems

    def refuse(self, *args, **kwargs):
        raise AssertionError("get_data() called while expanding placeholders")

    monkeypatch.setattr(MultiModalKwargsItems, "get_data", refuse)
    out = process(processor, f"{AUDIO_PLACEHOLDER}{AUDIO_PLACEHOLDER}", [tone(2.0), tone(30.0, seed=4)])
    assert [p.length for p in out["mm_placeholders"]["audio"]] == [10, 150]
