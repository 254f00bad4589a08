"""`vllm serve <tiny checkpoint>` (our plugin through the entry point) via the openai SDK."""

import base64
import io
import json

import httpx
import openai
import pytest
import soundfile as sf

from tests.model_plugins.conftest import SAMPLE_RATE, tone


def wav_base64(seconds: float) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def audio_message(seconds: float, text: str = "What do you hear?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": wav_base64(seconds), "format": "wav"}},
                {"type": "text", "text": text},
            ],
        }
    ]


@pytest.fixture(scope="module")
def client(engine_server):
    return openai.OpenAI(base_url=f"{engine_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_completion_with_input_audio(client, engine_server, tiny_checkpoint):
    reply = client.chat.completions.create(
        model=engine_server.model, messages=audio_message(3.0), max_tokens=8, temperature=0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    assert reply.choices[0].finish_reason in {"length", "stop"}
    assert reply.usage.completion_tokens >= 1
    # The chat template put the audio placeholder in the prompt; the 3 s clip became 15 tokens.
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["added_tokens"]
    audio_id = next(t["id"] for t in vocab if t["content"] == "<|AUDIO|>")
    assert reply.prompt_token_ids.count(audio_id) == 15


def test_text_only_chat_completion(client, engine_server):
    reply = client.chat.completions.create(
        model=engine_server.model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.usage.completion_tokens >= 1


def test_log_shows_our_plugin_class_served(client, engine_server):
    log = engine_server.log()
    assert "alm plugin class model_plugins.midashenglm.model.MiDashengLM" in log
    assert "vllm.model_executor.models.midashenglm" not in log


def test_clip_over_the_maximum_is_a_400_and_the_engine_lives_on(client, engine_server):
    # vLLM's own decode limit (VLLM_MAX_AUDIO_DECODE_DURATION_S, 600 s) or our processor's
    # max_audio_seconds (600 s) answers first; either way a 400 that names the limit.
    with pytest.raises(openai.BadRequestError, match=r"600 ?s"):
        client.chat.completions.create(model=engine_server.model, messages=audio_message(601.0), max_tokens=4)
    assert httpx.get(f"{engine_server.url}/health").status_code == 200
    reply = client.chat.completions.create(model=engine_server.model, messages=audio_message(1.0), max_tokens=4)
    assert reply.usage.completion_tokens >= 1
