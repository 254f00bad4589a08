"""Qwen-Audio-Chat's tiny checkpoint through our plugin (model_plugins/qwen_audio) on the real vLLM engine, and
through the gateway with the openai SDK.

No transformers implementation of it exists (only the published remote code), so the shared cases that compare
with transformers' greedy tokens are not collected here; the engine tests (tests/model_plugins/qwen_audio)
check batching, chunked prefill and compilation instead. A clip over 30 s is not cut: it becomes consecutive
<= 30 s spans, so the gateway counts it whole and only the 2048-token context bounds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from model_plugins.qwen_audio.tokenizer import register_with_transformers
from server.families.facts import FAMILIES
from tests.families.cases import (  # noqa: F401  # collected here: this family's rows
    test_audio_tokens_5s_and_45s,
    test_chat_non_stream,
    test_chat_stream_equals_non_stream,
)
from tests.families.gateway_cases import (  # noqa: F401  # collected here: this family's rows through the gateway
    test_gateway_chat_stream,
    test_gateway_transcription,
)
from tests.families.support import RATE, audio_part, chat, tone, user
from tests.support.engine import EngineProcess, start_engine

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

register_with_transformers()  # the `tokenizer` fixture's AutoTokenizer finds QWenTokenizer without remote code

FAMILY = "qwen-audio-chat"
AUDIO_TOKEN = "[[[AUDIO:modality]]]"
"""The pad token between `<audio>` and `</audio>`: n per span (the span is n + 2 with the two brackets)."""
TOKENS_5S_45S = (125, 750 + 375)
"""5 s: one span of 125 + 2; 45 s: spans of 30 s (750 + 2) and 15 s (375 + 2), nothing cut."""
WINDOW_S = 120.0
"""Only for the shared gateway fixture (its clip limit = this + 60 s): this family has no per-clip window."""
CONTEXT = 2048
AUDIO_IDS = (155163, 155164, 151851)


@pytest.fixture(scope="module")
def family_server(family_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The engine with the family's context (2048: past seq_length the published model changes its attention)."""
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    engine = start_engine(family_checkpoint, log, served_model=family_checkpoint.name, max_model_len=CONTEXT)
    try:
        yield engine
    finally:
        engine.stop()


def _audio_only(clip: np.ndarray, text: str) -> list[dict]:
    return [{"role": "user", "content": [audio_part(clip, "flac"), {"type": "text", "text": text}]}]


def test_prompt_is_the_published_chat_format(client: openai.OpenAI, family_server: EngineProcess,
                                             tokenizer) -> None:  # fmt: skip
    """ChatML with the published default system prompt, `Audio 1:` + the span + newline + the question."""
    reply = chat(client, family_server.model, [user(tone(1.0), "what does the person say?")], max_tokens=1)
    ids = reply.prompt_token_ids
    start, end = ids.index(AUDIO_IDS[0]), ids.index(AUDIO_IDS[1])
    assert ids[start + 1 : end] == [AUDIO_IDS[2]] * 25
    text = tokenizer.decode(ids[:start]) + "<audio></audio>" + tokenizer.decode(ids[end + 1 :])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1:<audio></audio>\nwhat does the person say?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gateway_chat_non_stream(gateway_client: openai.OpenAI, client: openai.OpenAI,
                                 family_server: EngineProcess) -> None:  # fmt: skip
    """The gateway decodes the clip and forwards it again: the same prompt, tokens and text as asking directly."""
    messages = [user(tone(5.0), "Describe the audio.")]
    via = chat(gateway_client, family_server.model, messages)
    direct = chat(client, family_server.model, messages)
    assert via.model == family_server.model
    assert via.prompt_token_ids == direct.prompt_token_ids
    assert via.choices[0].token_ids == direct.choices[0].token_ids
    assert via.choices[0].message.content == direct.choices[0].message.content


def test_gateway_serves_a_45s_clip_whole_in_two_spans(gateway_client: openai.OpenAI,
                                                      family_server: EngineProcess) -> None:  # fmt: skip
    """Past the 30 s window the clip is split, not cut: two spans, and the gateway's count agrees."""
    clip = tone(45.0)
    reply = chat(gateway_client, family_server.model, _audio_only(clip, "Describe."), max_tokens=1)
    ids = reply.prompt_token_ids
    assert ids.count(AUDIO_IDS[0]) == ids.count(AUDIO_IDS[1]) == 2
    assert sum(ids.count(t) for t in AUDIO_IDS) == FAMILIES[FAMILY].count_audio(len(clip)) == 752 + 377


def test_gateway_refuses_audio_past_the_context(gateway_client: openai.OpenAI, family_server: EngineProcess) -> None:
    """100 s is 4 spans (3 x 752 + 252 = 2508 tokens) > 2048: a 400 naming the context before the engine works."""
    clip = np.zeros(100 * RATE, dtype=np.float32)
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gateway_client, family_server.model, _audio_only(clip, "Describe."), max_tokens=1)
    error = refused.value.response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "2048" in error["message"]


def test_two_clips_in_one_message_are_numbered_spans(client: openai.OpenAI, family_server: EngineProcess,
                                                     tokenizer) -> None:  # fmt: skip
    """As the published `from_list_format` writes several clips: `Audio 1:` span, newline, `Audio 2:` span."""
    content = [audio_part(tone(1.0)), audio_part(tone(2.0, hz=880.0)), {"type": "text", "text": "Compare."}]
    reply = chat(client, family_server.model, [{"role": "user", "content": content}], max_tokens=1)
    ids = reply.prompt_token_ids
    assert [ids.count(t) for t in AUDIO_IDS] == [2, 2, 25 + 50]
    assert "Audio 1:<audio></audio>\nAudio 2:<audio></audio>\nCompare." in tokenizer.decode(
        [t for t in ids if t != AUDIO_IDS[2]]
    )
