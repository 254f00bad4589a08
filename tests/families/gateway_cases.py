"""The family tests through the gateway (openai SDK → gateway → the module's engine), imported by each family
module. Besides ``cases``' names, a family module defines ``WINDOW_S`` (the longest clip one audio item of the
family holds; the gateway refuses longer ones) and ``WITHIN`` ((seconds, audio tokens): a clip the gateway
serves whole, at or far past where other families cut)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import openai
import pytest

from server.families.facts import FAMILIES
from tests.families.cases import CLIP_A, CLIP_B, MULTI_TURN
from tests.families.support import RATE, audio_part, chat, engine_tokens, tone, user, wav_b64
from tests.support.engine import EngineProcess
from tests.support.waiting import wait_until

PARAM = "messages[0].content[0].input_audio.data"


def _module(request: pytest.FixtureRequest) -> Any:
    return request.module


def _audio_only(clip: np.ndarray, text: str, fmt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [audio_part(clip, fmt), {"type": "text", "text": text}]}]


def test_gateway_chat_non_stream(gateway_client: openai.OpenAI, client: openai.OpenAI, family_server: EngineProcess,
                                 reference: list[dict[str, list[int]]]) -> None:  # fmt: skip
    """The gateway decodes the clip and forwards it again: the engine still sees the very samples transformers
    was given (same prompt ids, same greedy tokens), and the answer is the one the engine gives directly."""
    messages = [user(CLIP_A, "Describe the audio.")]
    via = chat(gateway_client, family_server.model, messages)
    assert via.model == family_server.model
    assert via.prompt_token_ids == reference[0]["prompt_ids"]
    assert via.choices[0].token_ids == reference[0]["tokens"]
    direct = chat(client, family_server.model, messages)
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage is not None and direct.usage is not None
    # The gateway adds one extension field (usage.audio_seconds); the rest is the engine's.
    assert via.usage.model_dump(exclude={"audio_seconds"}) == direct.usage.model_dump()
    assert via.usage.model_extra == {"audio_seconds": pytest.approx(len(CLIP_A) / 16_000, abs=1e-3)}


def test_gateway_chat_stream(gateway_client: openai.OpenAI, client: openai.OpenAI,
                             family_server: EngineProcess) -> None:  # fmt: skip
    messages = [user(CLIP_B, "Describe the audio.")]
    chunks = list(
        chat(gateway_client, family_server.model, messages, stream=True, stream_options={"include_usage": True})
    )
    direct = chat(client, family_server.model, messages)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == direct.choices[0].finish_reason
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        direct.usage.prompt_tokens, direct.usage.completion_tokens,
    )  # fmt: skip


def test_gateway_multi_turn_with_audio_in_an_earlier_turn(gateway_client: openai.OpenAI,
                                                          family_server: EngineProcess,
                                                          reference: list[dict[str, list[int]]]) -> None:  # fmt: skip
    reply = chat(gateway_client, family_server.model, MULTI_TURN)
    assert reply.prompt_token_ids == reference[2]["prompt_ids"]
    assert reply.choices[0].token_ids == reference[2]["tokens"]


def test_gateway_transcription(gateway_client: openai.OpenAI, client: openai.OpenAI, family_server: EngineProcess,
                               request: pytest.FixtureRequest) -> None:  # fmt: skip
    """A transcription is the family's own transcription prompt (model card) with the clip: the engine counts the
    prompt and output tokens of that chat sent to it directly (random weights may decode to no text at all), and
    the text is that chat's (temperature 0; 8 tokens, the gateway's limit in this test and ``chat``'s)."""
    prompt = FAMILIES[_module(request).FAMILY].transcription_prompt
    before = engine_tokens(family_server)
    text = gateway_client.audio.transcriptions.create(
        model=family_server.model, file=("clip.wav", base64.b64decode(wav_b64(CLIP_A))), temperature=0.0
    ).text
    wait_until(lambda: engine_tokens(family_server) != before, 10)  # counted just after the answer
    prompt_tokens, output_tokens = (a - b for a, b in zip(engine_tokens(family_server), before, strict=True))
    direct = chat(client, family_server.model, _audio_only(CLIP_A, prompt, "wav"), extra_body={})  # as sent
    assert (prompt_tokens, output_tokens) == (direct.usage.prompt_tokens, direct.usage.completion_tokens)
    assert text == direct.choices[0].message.content


def test_gateway_refuses_a_clip_past_the_window(gateway_client: openai.OpenAI, family_server: EngineProcess,
                                                request: pytest.FixtureRequest) -> None:  # fmt: skip
    """Two seconds past the family's window: a 400 that names the limit, not a 200 that heard part of the clip.
    FLAC silence keeps even Qwen3-Omni's 40 minutes small, and past the 1 s of slack the header check allows it is
    refused before a sample is decoded (the exact edge: tests/server/families/test_model_facts.py)."""
    window: float = _module(request).WINDOW_S
    clip = np.zeros(int((window + 2) * RATE), dtype=np.float32)
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gateway_client, family_server.model, _audio_only(clip, "Describe the audio.", "flac"), max_tokens=1)
    assert refused.value.status_code == 400
    assert refused.value.response.json() == {
        "error": {
            "message": f'audio is longer than one audio item of model "{family_server.model}" can hold: at most '
            f"{window:g} s per clip ({window + 2:.1f} s). Send shorter clips, or split the audio into consecutive "
            "clips of at most that length",
            "type": "invalid_request_error",
            "param": PARAM,
            "code": "audio_too_long",
        }
    }


def test_gateway_serves_a_long_clip_whole(gateway_client: openai.OpenAI, family_server: EngineProcess,
                                          audio_token_id: int, request: pytest.FixtureRequest) -> None:  # fmt: skip
    """A clip within the window: the prompt holds the audio tokens of every one of its seconds (the family's
    formula, counted independently in the module), so nothing was cut on the way."""
    seconds, tokens = _module(request).WITHIN
    facts = FAMILIES[_module(request).FAMILY]
    assert facts.count_audio(int(seconds * RATE)) == tokens  # the gateway's own count agrees
    reply = chat(gateway_client, family_server.model, _audio_only(tone(seconds), "Describe.", "flac"), max_tokens=1)
    assert reply.prompt_token_ids.count(audio_token_id) == tokens
