"""THE engine contract (alm.engine): one settings object → vLLM's argv and env, for every launcher."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from alm import cli, placement
from alm.engine import NO_URL_FETCHING, OWNED_FLAGS, EngineSettings, engine_launch
from alm.stack import plan_stack
from server.config import Settings, load_settings

SERVER = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
AUDIO_IO = ("--media-io-kwargs", '{"audio": {"audio_backend": "soundfile"}}')
SHARED_WITH_GATEWAY = ("max_audio_seconds", "shared_audio_dir", "max_num_seqs")


def test_cpu_build(clean_env) -> None:
    launch = engine_launch(EngineSettings(model_path="/models/m7b", engine_port=8001), cpu=True)
    assert launch.argv == (
        *SERVER, "--model", "/models/m7b", "--served-model-name", "m7b", "--host", "127.0.0.1", "--port", "8001",
        *AUDIO_IO, "--hf-overrides", '{"max_audio_seconds": 600.0}', "--allowed-media-domains", NO_URL_FETCHING,
        "--enable-server-load-tracking",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "8192",
    )  # fmt: skip
    assert launch.env == {
        "VLLM_MAX_AUDIO_DECODE_DURATION_S": "600",
        "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB": "37",  # 601 s of 16 kHz float32: 36.7 MiB (vLLM's default is 25)
        "VLLM_MAX_AUDIO_DECODE_BYTES": str(37 * 1024 * 1024),
        "VLLM_REGEX_COMPILATION_TIMEOUT_S": "10",
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
    }


@pytest.mark.parametrize("seconds", [0.5, 30, 400, 450, 600, 1800.5, 7200])
def test_engine_audio_limits_follow_the_longest_clip(clean_env, seconds) -> None:
    """The gateway forwards at most a 16 kHz mono float32 WAV (64,000 bytes a second and a 44-byte header): vLLM's
    file-size and decoded-bytes limits hold the longest one, with a second and under 1 MiB to spare."""
    env = engine_launch(EngineSettings(model_path="/m", max_audio_seconds=seconds), cpu=True).env
    limit = int(env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"]) * 1024 * 1024
    longest = 44 + math.ceil(seconds) * 64_000
    assert longest + 64_000 <= limit < longest + 64_000 + 1024 * 1024
    assert int(env["VLLM_MAX_AUDIO_DECODE_BYTES"]) == limit  # the float32 PCM vLLM decodes it into
    assert (limit > 25 * 1024 * 1024) == (seconds > 409)  # vLLM's default 25 MB holds 409 s at most


def test_cuda_build_keeps_vllm_defaults_unless_set(clean_env) -> None:
    settings = EngineSettings(model_path="org/model", served_model_name="m", engine_host="0.0.0.0")
    assert engine_launch(settings, cpu=False).argv == (
        *SERVER, "--model", "org/model", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8000",
        *AUDIO_IO, "--hf-overrides", '{"max_audio_seconds": 600.0}', "--allowed-media-domains", NO_URL_FETCHING,
        "--enable-server-load-tracking",
    )  # fmt: skip
    tuned = settings.model_copy(
        update={
            "engine_dtype": "bfloat16",
            "engine_eager": False,
            "max_model_len": 4096,
            "max_num_seqs": 256,
            "gpu_memory_utilization": 0.45,
        }
    )
    assert engine_launch(tuned, cpu=False).argv[-9:] == (
        "--dtype", "bfloat16", "--no-enforce-eager", "--max-model-len", "4096", "--max-num-seqs", "256",
        "--gpu-memory-utilization", "0.45",
    )  # fmt: skip


def test_one_environment_configures_gateway_and_engine(clean_env, tmp_path) -> None:
    for name in SHARED_WITH_GATEWAY:  # same names, same defaults
        assert EngineSettings.model_fields[name].default == Settings.model_fields[name].default, name
    clean_env.setenv("ALM_MAX_AUDIO_SECONDS", "1800.5")
    clean_env.setenv("ALM_SHARED_AUDIO_DIR", str(tmp_path))
    clean_env.setenv("ALM_MAX_NUM_SEQS", "48")
    clean_env.setenv("ALM_MODEL_PATH", "/models/m")
    gateway, engine = load_settings(), EngineSettings()
    for name in SHARED_WITH_GATEWAY:
        assert getattr(gateway, name) == getattr(engine, name), name
    launch = engine_launch(engine, cpu=True)
    argv = list(launch.argv)
    assert json.loads(argv[argv.index("--hf-overrides") + 1]) == {"max_audio_seconds": 1800.5}
    assert launch.env["VLLM_MAX_AUDIO_DECODE_DURATION_S"] == "1801"  # vLLM takes whole seconds: never below ours
    assert launch.env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"] == "110"  # 1802 s of 16 kHz float32: 109.98 MiB
    assert argv[argv.index("--allowed-local-media-path") + 1] == str(tmp_path)
    assert argv[argv.index("--max-num-seqs") + 1] == "48"


@pytest.mark.parametrize(("args", "message"), [
    ("--max-num-seqs 64", "use ALM_MAX_NUM_SEQS"),
    ("--max_model_len=4096", "use ALM_MAX_MODEL_LEN"),  # vLLM's underscore spelling too
    ("--allowed-media-domains evil.example", "engines fetch no URL"),
    ("--allowed-local-media-path /", "use ALM_SHARED_AUDIO_DIR"),
    ("--port 9000", "use ALM_ENGINE_PORT"),
    ("--device-memory-utilization 0.9", "use ALM_GPU_MEMORY_UTILIZATION"),  # vLLM's alias
    # argparse takes unambiguous prefixes: --allowed-local is --allowed-local-media-path
    ("--allowed-local-media /", r"--allowed-local-media \(--allowed-local-media-path\) .* use ALM_SHARED_AUDIO_DIR"),
    ("--allowed-media-domain evil.example", r"\(--allowed-media-domains\) is set by the engine contract"),
    ("--allowed_local=/", r"--allowed-local \(--allowed-local-media-path\)"),  # =value, underscores
    ("--served-model=x", "use ALM_SERVED_MODEL_NAME"),
    ("--media-io.audio.audio_backend x", r"--media-io \(--media-io-kwargs\)"),  # vLLM's dotted JSON form
    ("--enforce", r"\(--enforce-eager\) .* use ALM_ENGINE_EAGER"),
    ("--no-enforce", r"\(--no-enforce-eager\) .* use ALM_ENGINE_EAGER"),
    ("--no-enforce-eager", "use ALM_ENGINE_EAGER"),
    ("--gpu-mem 0.99", "use ALM_GPU_MEMORY_UTILIZATION"),
    ("--config x.yaml", "--config is refused: its file could set the contract's flags"),
    ("--config=x.yaml", "--config is refused"),
    ("-- --config x.yaml", "--config is refused"),  # vLLM looks for --config even after "--"
    ("--conf x.yaml", r"--conf \(--config\) is refused"),
    ("--hf-over '{\"rope_theta\": 1}'", "abbreviates --hf-overrides: spell it out"),
    ("--hf-over.max_audio_seconds 30", "abbreviates --hf-overrides"),
    ("--media-io-kwargs {}", "the contract sets the audio backend"),
    ("--hf-overrides '{\"max_audio_seconds\": 30}'", "set ALM_MAX_AUDIO_SECONDS instead"),
    ("--hf-overrides.max_audio_seconds 30", "set ALM_MAX_AUDIO_SECONDS instead"),
    ("--hf-overrides [1]", "needs a JSON object"),
])  # fmt: skip
def test_flags_the_contract_sets_are_refused_in_engine_args(clean_env, args, message) -> None:
    clean_env.setenv("ALM_ENGINE_ARGS", args)
    with pytest.raises(ValueError, match=message):
        engine_launch(EngineSettings(model_path="/m"), cpu=True)


def test_extra_flags_pass_through_and_hf_overrides_merge(clean_env) -> None:
    clean_env.setenv(
        "ALM_ENGINE_ARGS",
        "--max-num-batched-tokens 32 --hf-overrides '{\"rope_theta\": 1e6}' --hf-overrides.rope_scaling.factor 2 -O0 "
        "--config-format hf --no-enable-prefix-caching --model-impl vllm",  # not prefixes of owned flags
    )
    argv = list(engine_launch(EngineSettings(model_path="/m"), cpu=True).argv)
    assert argv[-8:] == [
        "--max-num-batched-tokens", "32", "-O0", "--config-format", "hf", "--no-enable-prefix-caching",
        "--model-impl", "vllm",
    ]  # fmt: skip
    assert argv.count("--hf-overrides") == 1
    assert json.loads(argv[argv.index("--hf-overrides") + 1]) == {
        "rope_theta": 1e6,
        "rope_scaling": {"factor": 2},
        "max_audio_seconds": 600.0,
    }


def test_port_from_alm_engine_port_else_port(clean_env) -> None:
    clean_env.setenv("PORT", "9001")
    assert EngineSettings().engine_port == 9001
    clean_env.setenv("ALM_ENGINE_PORT", "9002")
    assert EngineSettings().engine_port == 9002


def checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    return tmp_path / "ckpt"


def test_alm_engine_execs_what_alm_serve_spawns(clean_env, tmp_path) -> None:
    """The container's `alm engine` and `alm serve` build the same command line from the same settings."""
    clean_env.setattr(placement, "cpu_build", lambda: True)
    clean_env.setenv("ALM_MAX_AUDIO_SECONDS", "120")
    clean_env.setenv("ALM_MAX_NUM_SEQS", "48")
    clean_env.setenv("ALM_ENGINE_ARGS", "--max-num-batched-tokens 64")
    model, shared = checkpoint(tmp_path), tmp_path / "shared"
    plans, _ = plan_stack(EngineSettings(model_path=str(model)), [8123], shared)

    execs = []
    clean_env.setattr(cli.os, "execvpe", lambda file, argv, env: execs.append((file, argv, env)))
    clean_env.setenv("ALM_MODEL_PATH", str(model))
    clean_env.setenv("ALM_ENGINE_PORT", "8123")
    clean_env.setenv("ALM_SHARED_AUDIO_DIR", str(shared))
    assert cli.main(["engine"]) == 0
    [(file, argv, env)] = execs
    assert file == sys.executable and tuple(argv) == plans[0].launch.argv
    assert plans[0].launch.env.items() <= env.items()


def test_alm_engine_passes_its_other_flags_to_vllm(clean_env, tmp_path) -> None:
    execs = []
    clean_env.setattr(cli.os, "execvpe", lambda file, argv, env: execs.append(argv))
    clean_env.setenv("ALM_ENGINE_ARGS", "--max-num-batched-tokens 64")
    cli.main(["engine", "--model", str(checkpoint(tmp_path)), "--host", "0.0.0.0", "--port", "8200",
              "--served-model-name", "m", "--swap-space", "1", "-O0"])  # fmt: skip
    argv = execs[0]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8200"
    assert argv[argv.index("--served-model-name") + 1] == "m"
    assert argv[-5:] == ["--max-num-batched-tokens", "64", "--swap-space", "1", "-O0"]


def test_alm_engine_refuses_to_start_without_a_checkpoint(clean_env, tmp_path, capsys) -> None:
    assert cli.main(["engine"]) == cli.EX_CONFIG
    assert cli.main(["engine", "--model", str(tmp_path)]) == cli.EX_CONFIG  # no config.json
    assert "no checkpoint" in capsys.readouterr().err
    clean_env.setenv("ALM_ENGINE_ARGS", "--max-num-seqs 4")
    assert cli.main(["engine", "--model", str(checkpoint(tmp_path))]) == 2
    assert "use ALM_MAX_NUM_SEQS" in capsys.readouterr().err


VLLM_OPTIONS = """
import json
import subprocess
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
print(json.dumps({option: action.dest for option, action in parser._option_string_actions.items()}))
"""


def test_refused_flags_match_vllms_own_parser(clean_env) -> None:
    """Against the installed vLLM's parser: every spelling of an option the contract sets is refused (aliases too),
    and no other option is (no vLLM option is a strict prefix of an owned flag)."""
    run = subprocess.run([sys.executable, "-c", VLLM_OPTIONS], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    dests: dict[str, str] = json.loads(run.stdout.splitlines()[-1])
    assert set(OWNED_FLAGS) <= set(dests)
    owned = {dests[flag] for flag in (*OWNED_FLAGS, "--config")}

    def refused(option: str) -> bool:
        try:
            engine_launch(EngineSettings(model_path="/m", engine_args=[option, "{}"]), cpu=True)
        except ValueError:
            return True
        return False

    assert {option for option in dests if refused(option)} == {o for o, dest in dests.items() if dest in owned}
