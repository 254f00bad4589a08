"""Qwen3-Omni-30B-A3B's tiny checkpoint (the mixture-of-experts Thinker) on the real vLLM engine. On the CPU
build it needs the patched torchvision of scripts/omni-extras.sh on the engine's PYTHONPATH (alm.families); the
fixtures set it up. Its audio tower takes 100-frame windows: 13 tokens per second, no cut."""

from __future__ import annotations

from tests.families.cases import (  # noqa: F401  # collected here: this family's rows
    test_audio_tokens_5s_and_45s,
    test_chat_non_stream,
    test_chat_stream_equals_non_stream,
    test_clips_give_different_answers,
    test_greedy_tokens_equal_transformers,
    test_multi_turn_with_audio_in_an_earlier_turn,
)
from tests.families.gateway_cases import (  # noqa: F401  # collected here: this family's rows through the gateway
    test_gateway_chat_non_stream,
    test_gateway_chat_stream,
    test_gateway_multi_turn_with_audio_in_an_earlier_turn,
    test_gateway_refuses_a_clip_past_the_window,
    test_gateway_serves_a_long_clip_whole,
    test_gateway_transcription,
)

FAMILY = "qwen3-omni"
AUDIO_TOKEN = "<|audio_pad|>"
TOKENS_5S_45S = (65, 585)
WINDOW_S = 2400.0
"""The model card's 40 minutes (its processor does not cut)."""
WITHIN = (310.0, 4030)
"""Past Qwen2.5-Omni's window and ten times Qwen2-Audio's, inside the CPU engine's 8192-token context:
310 s × 13 tokens."""
