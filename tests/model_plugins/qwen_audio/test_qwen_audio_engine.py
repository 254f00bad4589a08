"""Qwen-Audio-Chat's tiny checkpoint on the real vLLM engine (offline LLM): span lengths per clip length, and
greedy tokens that do not depend on batching, chunked prefill or compilation."""

import gc
from pathlib import Path

import pytest
from vllm import LLM, SamplingParams

from model_plugins.qwen_audio.processing import placeholder
from model_plugins.qwen_audio.tiny import make
from tests.model_plugins.conftest import SAMPLE_RATE, tone

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
AUDIO_IDS = {155163, 155164, 151851}
"""`<audio>`, `</audio>` and the pad token between them: every position of a span."""
SPAN_SECONDS = (0.5, 1.0, 10.0, 29.99, 30.0, 45.0)
SPAN_TOKENS = [14, 27, 252, 752, 752, 1129]
"""mel_len = L // 160, T = (mel_len - 1) // 2 + 1, n = (T - 2) // 2 + 1, + 2 per <= 30 s piece; 45 s = 752 + 377."""
WORKLOADS = {
    "short_alone": [3.0],
    "short_with_long": [3.0, 40.0],
    "mixed": [0.5, 31.0, 12.0],
}
"""name -> the clips sent together in ONE generate() call (one engine batch)."""


def prompt(seconds: float, index: int) -> dict:
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{placeholder(1)}\nwhat is in clip {index}?<|im_end|>\n<|im_start|>assistant\n"
    )
    clip = tone(seconds, freq=200.0 + 100.0 * index, seed=index)
    return {"prompt": text, "multi_modal_data": {"audio": (clip, SAMPLE_RATE)}}


def run_engine(checkpoint: Path, **engine_args: object) -> dict[str, list[list[int]]]:
    """Start one engine, run every workload, shut it down; greedy token ids per prompt (and the span lengths
    of SPAN_SECONDS under "spans")."""
    llm = LLM(model=str(checkpoint), dtype="float32", max_model_len=2048, max_num_seqs=8, seed=0, **engine_args)
    try:
        out = {
            name: [list(o.outputs[0].token_ids) for o in llm.generate([prompt(s, i) for i, s in enumerate(clips)],
                                                                       GREEDY)]
            for name, clips in WORKLOADS.items()
        }  # fmt: skip
        spans = llm.generate([prompt(s, 0) for s in SPAN_SECONDS], SamplingParams(max_tokens=1))
        out["spans"] = [[sum(t in AUDIO_IDS for t in o.prompt_token_ids)] for o in spans]
        return out
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make(tmp_path_factory.mktemp("qwen-audio") / "tiny-qwen-audio-chat", seed=0)


@pytest.fixture(scope="module")
def eager(checkpoint: Path) -> dict[str, list[list[int]]]:
    return run_engine(checkpoint, enforce_eager=True)


@pytest.fixture(scope="module")
def eager_budget_64(checkpoint: Path) -> dict[str, list[list[int]]]:
    # 64 tokens per step: a 30 s span (752 tokens) is prefilled over 12+ steps.
    return run_engine(checkpoint, enforce_eager=True, max_num_batched_tokens=64)


@pytest.fixture(scope="module")
def compiled(checkpoint: Path) -> dict[str, list[list[int]]]:
    return run_engine(checkpoint, enforce_eager=False)


def test_span_lengths_follow_the_published_formula_per_30s_piece(eager: dict[str, list[list[int]]]) -> None:
    assert [count for (count,) in eager["spans"]] == SPAN_TOKENS


def test_every_prompt_generates(eager: dict[str, list[list[int]]]) -> None:
    assert all(len(tokens) == GREEDY.max_tokens for name in WORKLOADS for tokens in eager[name])


def test_clip_alone_and_batched_with_a_longer_clip_give_the_same_tokens(eager: dict[str, list[list[int]]]) -> None:
    assert eager["short_with_long"][0] == eager["short_alone"][0]


def test_clips_give_different_answers(eager: dict[str, list[list[int]]]) -> None:
    """The audio reaches the decoder: different clips with the same text answer differently."""
    assert len({tuple(tokens) for tokens in eager["mixed"]}) == len(WORKLOADS["mixed"])


def test_chunked_prefill_gives_the_same_tokens_as_one_big_step(eager, eager_budget_64) -> None:
    assert eager_budget_64 == eager


def test_compiled_decoder_gives_the_same_tokens_as_eager(eager, compiled) -> None:
    assert compiled == eager
