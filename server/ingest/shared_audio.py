"""Hand clips to engines on the same host as files instead of base64 inside the JSON.

With ``ALM_SHARED_AUDIO_DIR`` set (a directory the engines can read, ideally on tmpfs such as ``/dev/shm``, and
given to each engine as ``--allowed-local-media-path``), each normalised clip is written there as a WAV and
the engine gets a ``file://`` URL: no megabytes of base64 to encode, send, receive and decode on either side.
A clip's file lives until the engine has read it (its answer, or a stream's first event, has arrived), or for a
stream that may resume on another engine (server/relay/resume.py) until the stream ends; files that a cancelled or
crashed request left behind are swept once they are older than the request timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path

import numpy as np

from server.ingest.audio.clip import encode_wav

log = logging.getLogger("server.ingest.shared_audio")

_SUFFIX = ".alm.wav"
SWEEP_INTERVAL_S = 60.0


class SharedAudioDir:
    def __init__(self, root: str | Path, max_age_s: float) -> None:
        self.root = Path(root).resolve()
        self.max_age_s = max_age_s
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, samples: np.ndarray) -> tuple[Path, str]:
        """Write one clip (synchronous: callers are in the ingest pool) → (path, file:// URL)."""
        path = self.root / f"{secrets.token_hex(16)}{_SUFFIX}"  # unguessable: the dir is shared with engines
        data = encode_wav(samples)
        try:
            path.write_bytes(data)
        except BaseException:
            # A write that failed part-way (a full tmpfs) leaves a partial file no engine will read.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        return path, path.as_uri()

    def try_write(self, samples: np.ndarray) -> tuple[Path, str] | None:
        """``write``, or None when the directory refuses (full tmpfs, removed, permissions): the caller then
        sends the clip inline, so a full disk costs bytes on the wire, never a failed request."""
        try:
            return self.write(samples)
        except OSError as exc:
            log.warning("cannot write a clip to %s (%s); sending it inline", self.root, exc)
            return None

    @staticmethod
    def remove(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep(self) -> int:
        """Remove clip files older than ``max_age_s`` (left by cancelled requests or a crashed gateway)."""
        cutoff, removed = time.time() - self.max_age_s, 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
        return removed

    async def run_sweeper(self) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep)
            except OSError as exc:  # the directory itself is gone or unreadable: keep trying
                log.warning("cannot sweep %s: %s", self.root, exc)
            else:
                if removed:
                    log.warning("removed %d stale clip file(s) from %s", removed, self.root)
            await asyncio.sleep(SWEEP_INTERVAL_S)
