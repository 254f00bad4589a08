"""Qwen2-Audio-7B-Instruct's tiny checkpoint on the real vLLM engine (runs in the serving venv as it is).

Its Whisper feature extractor cuts every clip at 30 s (``chunk_length`` 30 → at most 3000 mel frames → 750 audio
tokens) and vLLM passes that on without a word: a 45 s clip is answered as if it were 30 s, with a 200. The pin
below is what the gateway must refuse or split on.
"""

from __future__ import annotations

import openai

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
from tests.families.support import chat, tone, user
from tests.support.engine import EngineProcess

FAMILY = "qwen2-audio"
AUDIO_TOKEN = "<|AUDIO|>"
TOKENS_5S_45S = (125, 750)
"""25 tokens per second; 45 s gives the 30 s count."""
WINDOW_S = 30.0
WITHIN = (30.0, 750)
"""The whole window reaches the model: 30 s × 25 tokens."""


def test_silent_30s_cut(client: openai.OpenAI, family_server: EngineProcess, audio_token_id: int) -> None:
    """Every clip from 30 s up gets the same 750 audio tokens: whatever follows second 30 never reaches the model,
    and the engine still answers 200."""
    counts = [
        chat(client, family_server.model, [user(tone(s), "Describe the audio.")], max_tokens=1)
        .prompt_token_ids.count(audio_token_id)
        for s in (29.0, 30.0, 31.0, 60.0)
    ]  # fmt: skip
    assert counts == [725, 750, 750, 750]
