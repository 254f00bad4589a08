"""`alm serve --model A --model B`: engines for several models behind one gateway, which learns each model's audio
facts from the checkpoints (``ALM_MODEL_FACTS``, built by ``alm.stack.gateway_env``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from alm import cli, placement
from alm.engine import EngineSettings
from alm.families import checkpoint_facts
from alm.processes import free_port
from alm.stack import check_models, gateway_env, plan_stack
from alm.tiny import make
from server.config import load_settings
from server.families.facts import FAMILIES
from tests.families.support import audio_part, tone

WINDOWS = {"midashenglm": None, "qwen2-audio": 30.0, "qwen2.5-omni": 300.0, "qwen3-omni": None}
"""The longest clip each tiny checkpoint's own preprocessor config keeps (None: no cut stated there)."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {family: make(family, root / f"tiny-{family}") for family in WINDOWS}


@pytest.mark.parametrize("family", list(WINDOWS))
def test_checkpoint_facts_come_from_the_checkpoint(checkpoints: dict[str, Path], family: str) -> None:
    facts = checkpoint_facts(checkpoints[family])
    assert facts is not None and facts["family"] == family
    assert facts.get("max_clip_seconds") == WINDOWS[family]


def test_no_facts_for_an_unknown_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert checkpoint_facts(tmp_path) is None
    assert checkpoint_facts(tmp_path / "missing") is None


def test_gateway_env_carries_each_models_facts(clean_env, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    models = [EngineSettings(model_path=str(checkpoints[f])) for f in ("midashenglm", "qwen2-audio")]
    env = gateway_env(models, ["http://127.0.0.1:1", "http://127.0.0.1:2"], tmp_path, {"KEEP": "1"})
    assert env["KEEP"] == "1" and env["ALM_ENGINE_URLS"] == "http://127.0.0.1:1,http://127.0.0.1:2"
    assert env["ALM_SHARED_AUDIO_DIR"] == str(tmp_path)
    assert json.loads(env["ALM_MODEL_FACTS"]) == {
        "tiny-midashenglm": {"family": "midashenglm"},
        "tiny-qwen2-audio": {"family": "qwen2-audio", "sample_rate": 16000, "max_clip_seconds": 30.0},
    }
    for key, value in env.items():
        if key.startswith("ALM_"):
            clean_env.setenv(key, value)
    facts = load_settings().model_facts  # what the gateway makes of it
    assert facts["tiny-qwen2-audio"] == FAMILIES["qwen2-audio"]
    assert facts["tiny-midashenglm"] == FAMILIES["midashenglm"]


def test_the_operators_entries_win(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    models = [EngineSettings(model_path=str(checkpoints["qwen2-audio"]))]
    own = '{"tiny-qwen2-audio": {"family": "qwen2-audio", "max_clip_seconds": 20}, "remote": "qwen3-omni"}'
    env = gateway_env(models, ["http://e:1"], tmp_path, {"ALM_MODEL_FACTS": own})
    assert json.loads(env["ALM_MODEL_FACTS"]) == json.loads(own)
    bad = gateway_env(models, ["http://e:1"], tmp_path, {"ALM_MODEL_FACTS": "{oops"})
    assert bad["ALM_MODEL_FACTS"] == "{oops"  # left for the gateway to refuse with its reason


def test_each_engine_gets_its_own_model(clean_env, tmp_path: Path) -> None:
    clean_env.setattr(placement, "cpu_build", lambda: True)
    a, b = EngineSettings(model_path="/ckpt/a"), EngineSettings(model_path="/ckpt/b")
    plans, _ = plan_stack([a, a, b], [9001, 9002, 9003], tmp_path)
    served = [p.launch.argv[p.launch.argv.index("--served-model-name") + 1] for p in plans]
    assert served == ["a", "a", "b"]
    with pytest.raises(ValueError, match="2 engine settings for 3 ports"):
        plan_stack([a, b], [1, 2, 3], tmp_path)


def test_two_models_of_one_name_are_refused(clean_env) -> None:
    with pytest.raises(ValueError, match="one name"):
        check_models([EngineSettings(model_path="/x/m"), EngineSettings(model_path="/y/m")])
    assert cli.main(["serve", "--model", "/x/m", "--model", "/y/m"]) == 2


def test_served_model_name_applies_to_one_model_only(clean_env, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--model", "/x/a", "--model", "/x/b", "--served-model-name", "n"])
    assert exit_info.value.code == 2
    assert "--served-model-name applies to one --model" in capsys.readouterr().err


@pytest.mark.engine
def test_alm_serve_routes_two_families_by_model(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """One real stack: a MiDashengLM and a Qwen2-Audio engine behind one gateway. Each answers its own model
    (its own audio-token count), and the gateway refuses a clip past Qwen2-Audio's 30 s window."""
    md, qa = checkpoints["midashenglm"], checkpoints["qwen2-audio"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALM_")}
    proc = subprocess.Popen([sys.executable, "-m", "alm", "serve", "--model", str(md), "--model", str(qa),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "XDG_CACHE_HOME": str(tmp_path)})  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "alm: serving" in line:
                break
        assert "'tiny-midashenglm', 'tiny-qwen2-audio'" in lines[-1], "".join(lines)
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=300)
        assert sorted(m.id for m in sdk.models.list()) == ["tiny-midashenglm", "tiny-qwen2-audio"]

        def prompt_tokens(model: str, clip: np.ndarray) -> int:
            messages = [{"role": "user", "content": [audio_part(clip), {"type": "text", "text": "Describe."}]}]
            out = sdk.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0.0)  # type: ignore[arg-type]  # plain dicts
            assert out.model == model and out.usage is not None
            return out.usage.prompt_tokens

        md_tokens, qa_tokens = (
            prompt_tokens("tiny-midashenglm", tone(5.0)),
            prompt_tokens("tiny-qwen2-audio", tone(5.0)),
        )
        assert qa_tokens - md_tokens >= 125 - 25 - 10  # 125 audio tokens against 25, templates differ a little
        with pytest.raises(openai.BadRequestError) as refused:
            prompt_tokens("tiny-qwen2-audio", tone(31.0))
        assert refused.value.code == "audio_too_long" and "at most 30 s" in refused.value.message
        assert refused.value.param == "messages[0].content[0].input_audio.data"
        assert prompt_tokens("tiny-midashenglm", tone(31.0)) > 0  # no window for MiDashengLM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
