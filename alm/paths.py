"""Where alm keeps things on a host: its cache (tiny checkpoints, logs) and the gateway → engine audio directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TINY_NAME = "tiny-midashenglm"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alm"


def tiny_checkpoint() -> Path:
    """The embedded tiny model (seeded random weights in the published layout), created on first use."""
    from model_plugins.midashenglm.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir() / TINY_NAME)


def make_shared_audio_dir() -> Path:
    """A fresh directory for clips handed from the gateway to same-host engines: on tmpfs where there is one."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="alm-audio-", dir=base))
