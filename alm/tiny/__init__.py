"""Seeded random-weight checkpoints of every family we serve, in each family's published layout.

``make(family, out, seed)`` is ``alm make-tiny --family FAMILY --out DIR``. The Qwen makers use transformers' own
config and model classes at tiny sizes vLLM's CPU kernels accept (decoder head_dim 64) and a byte-level BPE
tokenizer trained on the spot with the family's published special tokens and chat template; MiDashengLM's maker
lives with its plugin. Each family's maker is named by its registry entry (server/families/registry.py); model
modules are imported only when their family is made.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from server.families.registry import FAMILIES as REGISTRY

FAMILIES: dict[str, str] = {family.name: family.tiny_maker for family in REGISTRY}
"""``--family`` name → ``module:function(out_dir, seed=...)`` writing the checkpoint (server/families/registry.py)."""


def make(family: str, out_dir: Path | str, seed: int = 0) -> Path:
    """Write the tiny ``family`` checkpoint into ``out_dir`` (created); ``config.json`` marks it complete."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of: {', '.join(FAMILIES)}")
    module, _, function = FAMILIES[family].partition(":")
    maker = getattr(importlib.import_module(module), function)
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    maker(staging, seed=seed)
    # Moved in with config.json last, so a reader that sees it sees a whole checkpoint.
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
        path.replace(out_dir / path.name)
    staging.rmdir()
    return out_dir
