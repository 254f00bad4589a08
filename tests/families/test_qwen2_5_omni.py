"""Qwen2.5-Omni-7B's tiny checkpoint (Thinker + Talker + Token2Wav tensors; vLLM serves the Thinker) on the real
vLLM engine. On the CPU build it needs the patched torchvision of scripts/omni-extras.sh on the engine's
PYTHONPATH (alm.families); the fixtures set it up. Its published ``chunk_length`` 300 cuts clips at 300 s."""

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

FAMILY = "qwen2.5-omni"
AUDIO_TOKEN = "<|AUDIO|>"
TOKENS_5S_45S = (125, 1125)
"""25 tokens per second, no cut below 300 s."""
WINDOW_S = 300.0
WITHIN = (300.0, 7500)
"""The whole published window reaches the model: 300 s × 25 tokens."""
