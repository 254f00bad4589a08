"""Per-model audio facts (server/families/facts.py): the audio-token formulas against the reference implementations,
``ALM_MODEL_FACTS`` parsing, and the gateway using each request's model's facts — its clip window (a longer clip
is refused with 400 ``audio_too_long``, never cut), its token formula and its transcription prompt."""

from __future__ import annotations

import httpx
import pytest
import torch
from pydantic import ValidationError
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

from server.config import load_settings
from server.families.facts import FAMILIES
from server.families.tokens import qwen3_omni, whisper
from tests.support.audio_synth import audio_part, chat_body, encode, tone

QA, MD = "qwen2-audio-7b", "midashenglm-7b"
FACTS = '{"qwen2-audio-7b": "qwen2-audio"}'
"""What ``alm serve`` would set for a Qwen2-Audio checkpoint; ``midashenglm-7b`` is left to the default."""
PARAM = "messages[0].content[0].input_audio.data"


def post(gw: str, body: dict) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body, timeout=60)


def whisper_mask_frames(n_samples: int) -> int:
    """Mel frames of transformers' Whisper feature extractor mask (the sample mask taken every 160th sample)."""
    return len(range(0, n_samples, 160))


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("n", [3_200, 79_999, 80_000, 80_001, 80_161, 80_321, 464_000, 480_000, 720_000])
def test_whisper_formula_is_qwen2_audio_encoders(n: int) -> None:
    _, expected = Qwen2AudioEncoder._get_feat_extract_output_lengths(None, torch.tensor(whisper_mask_frames(n)))  # type: ignore[arg-type]  # a pure function of its argument
    assert whisper(n) == int(expected)


@pytest.mark.parametrize("n", [3_200, 79_999, 80_000, 80_001, 83_680, 720_000, 9_600_123])
def test_qwen3_omni_formula_is_transformers(n: int) -> None:
    padded = -(-n // 160) * 160  # vLLM pads the clip to whole hops first
    expected = _get_feat_extract_output_lengths(torch.tensor(whisper_mask_frames(padded)))
    assert qwen3_omni(n) == int(expected)


@pytest.mark.parametrize(
    ("formula", "seconds", "tokens"),
    [(whisper, 5, 125), (whisper, 29, 725), (whisper, 30, 750), (whisper, 45, 1125), (qwen3_omni, 5, 65),
     (qwen3_omni, 45, 585)],
)  # fmt: skip
def test_formulas_give_the_counts_measured_on_the_engines(formula, seconds: int, tokens: int) -> None:
    """tests/families: vLLM's prompt token ids for 5 s / 29 s / 30 s / 45 s clips on the tiny checkpoints."""
    assert formula(seconds * 16_000) == tokens


# --------------------------------------------------------------------------- the setting


def test_unnamed_models_get_the_default_family() -> None:
    settings = load_settings(model_facts=FACTS)
    assert settings.facts_for(QA) == FAMILIES["qwen2-audio"]
    assert settings.facts_for(MD) == FAMILIES["midashenglm"]
    assert load_settings().facts_for(QA).max_clip_seconds is None  # nothing set: MiDashengLM, as before
    assert load_settings(audio_token_model="qwen3-omni").facts_for(MD) == FAMILIES["qwen3-omni"]
    assert load_settings(audio_token_model="none").facts_for(MD).audio_tokens == "none"


def test_checkpoint_values_override_the_family_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALM_MODEL_FACTS", '{"a": {"family": "qwen2.5-omni", "max_clip_seconds": 120}}')
    facts = load_settings().model_facts["a"]
    assert facts == FAMILIES["qwen2.5-omni"].model_copy(update={"max_clip_seconds": 120.0})
    assert facts.audio_tokens == "whisper"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "not JSON"),
        ('["qwen2-audio"]', "must be a JSON object"),
        ('{"a": "whisper"}', "needs a family"),
        ('{"a": {"max_clip_seconds": 30}}', "needs a family"),
        ('{"a": {"family": "qwen2-audio", "max_clip_seconds": 0}}', "greater than 0"),
        ('{"a": {"family": "qwen2-audio", "sample_rate": 24000}}', "16000 Hz audio only"),
        ('{"a": {"family": "qwen2-audio", "audio_tokens": "bpe"}}', "audio_tokens must be one of"),
        ('{"a": {"family": "qwen2-audio", "window": 30}}', "Extra inputs are not permitted"),
    ],
)
def test_bad_model_facts_are_refused_at_start_up(monkeypatch: pytest.MonkeyPatch, value: str, match: str) -> None:
    monkeypatch.setenv("ALM_MODEL_FACTS", value)
    with pytest.raises(ValidationError, match=match):
        load_settings()


# --------------------------------------------------------------------------- the gateway


@pytest.fixture
def two_models(start_fake, start_gateway):
    """A Qwen2-Audio engine and a MiDashengLM engine behind one gateway that knows the first one's family."""
    qa, qa_url = start_fake(model=QA)
    md, md_url = start_fake(model=MD)
    return qa, md, start_gateway([qa_url, md_url], model_facts=FACTS)


def test_a_clip_longer_than_the_models_window_is_refused(two_models) -> None:
    qa, md, gw = two_models
    resp = post(gw, chat_body(QA, audio_part("wav", 31.0)))
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {
            "message": f'audio is longer than one audio item of model "{QA}" can hold: at most 30 s per clip '
            "(31.0 s). Send shorter clips, or split the audio into consecutive clips of at most that length",
            "type": "invalid_request_error",
            "param": PARAM,
            "code": "audio_too_long",
        }
    }
    assert qa.bodies == [] and md.bodies == []
    assert post(gw, chat_body(QA, audio_part("wav", 29.5))).status_code == 200  # within the window
    assert post(gw, chat_body(MD, audio_part("wav", 31.0))).status_code == 200  # the other model has no window
    assert len(qa.bodies) == 1 and len(md.bodies) == 1


def test_the_window_is_judged_on_every_clip_of_a_request(two_models) -> None:
    qa, _, gw = two_models
    resp = post(gw, chat_body(QA, audio_part("wav", 2.0), audio_part("flac", 45.0, rate=44_100, channels=2)))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "audio_too_long"
    assert resp.json()["error"]["param"] == "messages[0].content[1].input_audio.data"
    assert "at most 30 s per clip" in resp.json()["error"]["message"]
    assert qa.bodies == []


def test_the_gateways_own_limit_still_applies_below_a_longer_window(start_fake, start_gateway) -> None:
    fake, url = start_fake(model=QA)
    gw = start_gateway([url], model_facts=FACTS, max_audio_seconds=20)
    resp = post(gw, chat_body(QA, audio_part("wav", 25.0)))
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "audio is longer than the 20 s limit (25.0 s)"
    assert fake.bodies == []


def test_transcriptions_refuse_long_clips_with_the_file_param(two_models) -> None:
    qa, _, gw = two_models
    wav = encode(tone(31.0), 16_000, "wav")
    resp = httpx.post(gw + "/v1/audio/transcriptions", data={"model": QA}, files={"file": ("a.wav", wav)}, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "file" and resp.json()["error"]["code"] == "audio_too_long"
    assert qa.bodies == []


def test_each_models_formula_counts_its_audio(start_fake, start_gateway) -> None:
    """29 s is 725 tokens for Qwen2-Audio (145 for MiDashengLM): with a 700-token context it cannot fit."""
    qa, qa_url = start_fake(model=QA, max_model_len=700)
    md, md_url = start_fake(model=MD, max_model_len=700)
    gw = start_gateway([qa_url, md_url], model_facts=FACTS)
    resp = post(gw, chat_body(QA, audio_part("wav", 29.0), max_tokens=None))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    assert "725 audio tokens in 1 clip" in resp.json()["error"]["message"]
    assert post(gw, chat_body(MD, audio_part("wav", 29.0), max_tokens=None)).status_code == 200
    assert qa.bodies == [] and len(md.bodies) == 1


def test_transcription_prompt_is_the_models_unless_set(start_fake, start_gateway) -> None:
    qa, qa_url = start_fake(model=QA)
    md, md_url = start_fake(model=MD)
    wav = encode(tone(1.0), 16_000, "wav")

    def prompt_sent(gw: str, model: str, fake) -> str:
        resp = httpx.post(gw + "/v1/audio/transcriptions", data={"model": model}, files={"file": ("a.wav", wav)})
        assert resp.status_code == 200, resp.text
        return fake.bodies[-1]["messages"][0]["content"][1]["text"]

    gw = start_gateway([qa_url, md_url], model_facts=FACTS)
    assert prompt_sent(gw, QA, qa) == FAMILIES["qwen2-audio"].transcription_prompt
    assert prompt_sent(gw, MD, md) == "Transcribe the audio."
    gw = start_gateway([qa_url, md_url], model_facts=FACTS, transcription_prompt="Write it down.")
    assert prompt_sent(gw, QA, qa) == "Write it down."
