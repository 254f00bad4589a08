"""The real vLLM engine (offline LLM) on the tiny checkpoint: greedy tokens must not
depend on batching, chunked prefill or compilation; long clips are served whatever
the token budget."""

import gc

import pytest
from vllm import LLM, SamplingParams

from model_plugins.midashenglm.processing import AUDIO_PLACEHOLDER
from tests.model_plugins.conftest import SAMPLE_RATE, tone

pytestmark = pytest.mark.engine  # a real vLLM engine (the fast loop deselects it)

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

# name -> the clips sent together in ONE generate() call (one engine batch).
WORKLOADS = {
    "short_alone": [3.0],
    "short_with_long": [3.0, 25.0],
    "long": [11.0, 61.0, 600.0],
}


def prompt(seconds: float, index: int) -> dict:
    text = f"<|im_start|>user\n{AUDIO_PLACEHOLDER}what is in clip {index}?<|im_end|>\n<|im_start|>assistant\n"
    clip = tone(seconds, freq=200.0 + 100.0 * index, seed=index)
    return {"prompt": text, "multi_modal_data": {"audio": (clip, SAMPLE_RATE)}}


def prompts(clips: list[float]) -> list[dict]:
    return [prompt(seconds, index) for index, seconds in enumerate(clips)]


def run_engine(checkpoint, **engine_args) -> dict[str, list[list[int]]]:
    """Start one engine, run every workload, shut it down; greedy token ids per prompt."""
    llm = LLM(model=str(checkpoint), dtype="float32", max_model_len=8192, max_num_seqs=8, seed=0, **engine_args)
    try:
        return {
            name: [list(o.outputs[0].token_ids) for o in llm.generate(prompts(clips), GREEDY)]
            for name, clips in WORKLOADS.items()
        }
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    return run_engine(tiny_checkpoint, enforce_eager=True)


@pytest.fixture(scope="module")
def eager_budget_32(tiny_checkpoint):
    # 32 tokens per step: every clip here (3 s = 15 tokens ... 600 s = 3000) is prefilled
    # in many chunks, and the 25 s clip's 125 audio tokens span several steps.
    return run_engine(tiny_checkpoint, enforce_eager=True, max_num_batched_tokens=32)


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint):
    return run_engine(tiny_checkpoint, enforce_eager=False)


def test_every_prompt_generates(eager):
    assert all(len(tokens) == GREEDY.max_tokens for outputs in eager.values() for tokens in outputs)


def test_clip_alone_and_batched_with_a_longer_clip_give_the_same_tokens(eager):
    assert eager["short_with_long"][0] == eager["short_alone"][0]


def test_long_clips_are_served_with_a_large_and_a_tiny_token_budget(eager, eager_budget_32):
    assert len(eager["long"]) == len(eager_budget_32["long"]) == 3


def test_chunked_prefill_gives_the_same_tokens_as_one_big_step(eager, eager_budget_32):
    assert eager_budget_32 == eager


def test_compiled_decoder_gives_the_same_tokens_as_eager(eager, compiled):
    assert compiled == eager
