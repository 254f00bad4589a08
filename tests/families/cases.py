"""The tests every family module runs against its own engine (imported there, so each family reports its own
rows). A family module defines ``FAMILY``, ``AUDIO_TOKEN`` and ``TOKENS_5S_45S`` (audio tokens vLLM gives a
5 s and a 45 s clip)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from transformers import PreTrainedTokenizerBase

from tests.families.support import chat, noise, tone, user
from tests.support.engine import EngineProcess

CLIP_A = tone(5.0)
CLIP_B = noise(3.0, seed=1)
MULTI_TURN = [
    user(CLIP_A, "What is this sound?"),
    {"role": "assistant", "content": "A steady tone."},
    user(None, "How long was the sound I sent you first?"),
]
"""The Qwen2-Audio README's pattern: a later turn refers back to audio from an earlier one."""
REFERENCE_CASES = [
    ([user(CLIP_A, "Describe the audio.")], [CLIP_A]),
    ([user(CLIP_B, "Describe the audio.")], [CLIP_B]),
    (MULTI_TURN, [CLIP_A]),
]


def _family(request: pytest.FixtureRequest) -> Any:
    return request.module


def test_chat_non_stream(client: openai.OpenAI, family_server: EngineProcess, audio_token_id: int,
                         tokenizer: PreTrainedTokenizerBase, request: pytest.FixtureRequest) -> None:  # fmt: skip
    reply = chat(client, family_server.model, [user(CLIP_A, "Describe the audio.")])
    choice = reply.choices[0]
    assert reply.model == family_server.model
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == len(choice.token_ids) > 0
    # Equal up to invalid UTF-8 (random weights emit lone bytes; vLLM's incremental detokenizer withholds them).
    text = tokenizer.decode(choice.token_ids, skip_special_tokens=True)
    assert isinstance(text, str)
    assert choice.message.content.replace("\ufffd", "") == text.replace("\ufffd", "")
    prompt = reply.prompt_token_ids
    assert reply.usage.prompt_tokens == len(prompt)
    assert prompt.count(audio_token_id) == _family(request).TOKENS_5S_45S[0]


def test_chat_stream_equals_non_stream(client: openai.OpenAI, family_server: EngineProcess) -> None:
    messages = [user(CLIP_B, "Describe the audio.")]
    whole = chat(client, family_server.model, messages)
    chunks = list(chat(client, family_server.model, messages, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_multi_turn_with_audio_in_an_earlier_turn(client: openai.OpenAI, family_server: EngineProcess,
                                                  audio_token_id: int, request: pytest.FixtureRequest,
                                                  reference: list[dict[str, list[int]]]) -> None:  # fmt: skip
    reply = chat(client, family_server.model, MULTI_TURN)
    assert reply.prompt_token_ids.count(audio_token_id) == _family(request).TOKENS_5S_45S[0]
    assert reply.prompt_token_ids == reference[2]["prompt_ids"]  # same template and expansion as transformers
    assert reply.choices[0].token_ids == reference[2]["tokens"]


@pytest.mark.parametrize("case", [0, 1], ids=["tone-5s", "noise-3s"])
def test_greedy_tokens_equal_transformers(client: openai.OpenAI, family_server: EngineProcess, case: int,
                                          reference: list[dict[str, list[int]]]) -> None:  # fmt: skip
    messages, _clips = REFERENCE_CASES[case]
    reply = chat(client, family_server.model, messages)
    assert reply.prompt_token_ids == reference[case]["prompt_ids"]
    assert reply.choices[0].token_ids == reference[case]["tokens"]


def test_clips_give_different_answers(reference: list[dict[str, list[int]]]) -> None:
    """The audio reaches the decoder: two clips, same text, different greedy answers (else the equality tests
    above could pass with the audio ignored)."""
    assert reference[0]["tokens"] != reference[1]["tokens"]


def test_audio_tokens_5s_and_45s(client: openai.OpenAI, family_server: EngineProcess, audio_token_id: int,
                                 request: pytest.FixtureRequest) -> None:  # fmt: skip
    counts = tuple(
        chat(client, family_server.model, [user(tone(s), "Describe the audio.")], max_tokens=1)
        .prompt_token_ids.count(audio_token_id)
        for s in (5.0, 45.0)
    )  # fmt: skip
    assert counts == _family(request).TOKENS_5S_45S
