"""The model families an engine may serve, told apart by the checkpoint's ``config.json`` ``architectures``, and
what each needs in the engine's environment beyond the engine contract's flags. The families, their architectures
and needs are the registry's (server/families/registry.py ``FAMILIES``); this module reads checkpoints against it.

The Qwen Omni families' vLLM model files and processors import torchvision at module import. On the CPU build the
only torchvision wheels the package index has are CUDA builds that break beside the CPU torch, so
``scripts/omni-extras.sh`` installs a patched copy into its own directory (never into the serving venv, where it
would break every other model's imports), and only Omni engines get it on their ``PYTHONPATH``. CUDA images
ship a working torchvision: there nothing is added.

``checkpoint_facts`` reads what the gateway must know about a checkpoint's audio (its family and the clip length
its feature extractor keeps) for ``ALM_MODEL_FACTS`` (server/families/facts.py holds the family defaults).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from server.families.registry import FAMILIES, ModelFamily

OMNI_EXTRAS_ENV = "ALM_OMNI_EXTRAS"
"""Overrides where the patched torchvision lies (default: ``<venv>/omni-extras``)."""
SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "omni-extras.sh"
READY_MARK = ".alm-ready"
_BY_ARCHITECTURE = {arch: family for family in FAMILIES for arch in family.architectures}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect(model_path: str | Path) -> ModelFamily | None:
    """The family of the checkpoint at ``model_path``; None for a hub id, a missing or unknown config."""
    config = _read_json(Path(model_path) / "config.json")
    architectures = config.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        family = _BY_ARCHITECTURE.get(arch) if isinstance(arch, str) else None
        if family is not None and (family.config_key is None or family.config_key in config):
            return family
    return None


def omni_extras_dir() -> Path:
    return Path(os.environ.get(OMNI_EXTRAS_ENV) or Path(sys.prefix) / "omni-extras")


def ensure_omni_extras() -> Path:
    """The patched torchvision's directory, set up by ``scripts/omni-extras.sh`` if it is not there yet
    (~40 s once: a local wheel, no build). Raises RuntimeError with the script's output if that fails."""
    target = omni_extras_dir()
    if (target / READY_MARK).exists():
        return target
    done = subprocess.run(
        ["sh", str(SETUP_SCRIPT)], env={**os.environ, "VENV": sys.prefix, "DEST": str(target)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not (target / READY_MARK).exists():
        raise RuntimeError(f"{SETUP_SCRIPT} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return target


def engine_env(model_path: str | Path, *, cpu: bool) -> dict[str, str]:
    """Environment variables the engine of this checkpoint needs on top of the caller's (``PYTHONPATH`` is
    returned whole: the extras first, then the caller's own). Sets up the Omni extras on first use."""
    family = detect(model_path)
    if family is None or not family.needs_torchvision or not cpu:
        return {}
    paths = [str(ensure_omni_extras()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def checkpoint_facts(model_path: str | Path) -> dict[str, object] | None:
    """The audio facts of the checkpoint at ``model_path`` as ``ALM_MODEL_FACTS`` takes them: its family, and
    where the checkpoint states them, its feature extractor's rate and the longest clip it keeps
    (``preprocessor_config.json`` ``n_samples`` / ``sampling_rate``, else ``chunk_length``). None: unknown family."""
    family = detect(model_path)
    if family is None:
        return None
    facts: dict[str, object] = {"family": family.name}
    features = _read_json(Path(model_path) / "preprocessor_config.json")
    rate = features.get("sampling_rate")
    if type(rate) is int and rate > 0:
        facts["sample_rate"] = rate
    if family.cuts_at_chunk:
        n_samples, chunk = features.get("n_samples"), features.get("chunk_length")
        if type(n_samples) is int and n_samples > 0 and type(rate) is int and rate > 0:
            facts["max_clip_seconds"] = n_samples / rate
        elif isinstance(chunk, int | float) and chunk > 0:
            facts["max_clip_seconds"] = float(chunk)
    return facts


def model_facts_env(models: dict[str, str | Path], current: str = "") -> str:
    """``ALM_MODEL_FACTS`` for a gateway in front of ``models`` (served name → checkpoint): each known
    checkpoint's facts, under the entries of ``current`` (the operator's own setting, which wins)."""
    table: dict[str, object] = {}
    for name, path in models.items():
        facts = checkpoint_facts(path)
        if facts is not None:
            table[name] = facts
    try:
        given = json.loads(current) if current.strip() else {}
    except ValueError:
        given = None
    if not isinstance(given, dict):
        return current  # not ours to repair: the gateway refuses it at start-up with the reason
    return json.dumps({**table, **given}, separators=(",", ":"))
