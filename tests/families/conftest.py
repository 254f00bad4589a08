"""One tiny checkpoint, one real vLLM engine, one gateway in front of it and one transformers run per family
module (module scope): each family module names ``FAMILY`` and imports the shared tests from
``tests.families.cases`` (the engine directly) and ``tests.families.gateway_cases`` (through the gateway)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from alm.families import model_facts_env
from alm.tiny import make
from alm.tiny.tokenizer import token_ids
from server.api.app import create_app
from server.config import load_settings
from tests.families import cases
from tests.families.support import family_engine, transformers_answers
from tests.support.engine import EngineProcess
from tests.support.fakes import serve


@pytest.fixture(scope="module")
def family_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    family: str = request.module.FAMILY
    return make(family, tmp_path_factory.mktemp("ckpt") / f"tiny-{family}", seed=0)


@pytest.fixture(scope="module")
def family_server(family_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with family_engine(family_checkpoint, tmp_path_factory.mktemp("engine") / "engine.log") as engine:
        yield engine


@pytest.fixture(scope="module")
def client(family_server: EngineProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{family_server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def gateway(family_server: EngineProcess, family_checkpoint: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The gateway (in this process, on a real socket) in front of the module's engine, told the model's audio
    facts the way ``alm serve`` tells it (``ALM_MODEL_FACTS`` read from the checkpoint). Its own clip limit lies
    above the family's window, so the window, not the gateway's limit, is what refuses a longer clip."""
    settings = load_settings(
        engine_urls=[family_server.url],
        model_facts=model_facts_env({family_server.model: family_checkpoint}),
        max_audio_seconds=request.module.WINDOW_S + 60,
        transcription_max_tokens=8,
        health_interval_s=0.5,
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def gateway_client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(family_checkpoint: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(family_checkpoint)


@pytest.fixture(scope="module")
def audio_token_id(request: pytest.FixtureRequest, tokenizer: PreTrainedTokenizerBase) -> int:
    token: str = request.module.AUDIO_TOKEN
    return token_ids(tokenizer, [token])[token]


@pytest.fixture(scope="module")
def reference(family_checkpoint: Path) -> list[dict[str, list[int]]]:
    """transformers' prompt ids and greedy tokens for ``cases.REFERENCE_CASES``, in that order."""
    return transformers_answers(family_checkpoint, cases.REFERENCE_CASES)
