"""The shared-directory handoff to same-host engines, against a recording fake engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np

from server.ingest.shared_audio import SharedAudioDir
from tests.support.audio_synth import audio_part, chat_body
from tests.support.waiting import wait_until


def test_clips_go_as_files_that_are_removed_after_the_answer(start_fake, start_gateway, tmp_path: Path) -> None:
    seen: list[bool] = []

    class CheckFiles(list):
        def append(self, body: dict) -> None:  # runs inside the engine's request: the files must exist then
            for part in body["messages"][0]["content"]:
                if part["type"] == "audio_url":
                    seen.append(Path(part["audio_url"]["url"].removeprefix("file://")).is_file())
            super().append(body)

    engine, engine_url = start_fake(model="m", bodies=CheckFiles())
    url = start_gateway([engine_url], shared_audio_dir=str(tmp_path))
    for stream in (False, True):
        resp = httpx.post(
            url + "/v1/chat/completions",
            timeout=30,
            json=chat_body("m", audio_part("wav"), audio_part("flac"), stream=stream),
        )
        assert resp.status_code == 200, resp.text
    parts = [p for body in engine.bodies for p in body["messages"][0]["content"] if p["type"] != "text"]
    assert len(parts) == 4 and all(p["audio_url"]["url"].startswith(f"file://{tmp_path}/") for p in parts)
    assert seen == [True] * 4
    # A stream's files go when its relay closes, just after the client has read the end.
    wait_until(lambda: list(tmp_path.iterdir()) == [], timeout_s=5)


def test_sweep_removes_only_stale_clip_files(tmp_path: Path) -> None:
    shared = SharedAudioDir(tmp_path, max_age_s=60)
    old, _ = shared.write(np.zeros(1600, np.int16))
    fresh, _ = shared.write(np.zeros(1600, np.float32))
    other = tmp_path / "keep.txt"
    other.write_text("not ours")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert shared.sweep() == 1
    assert sorted(tmp_path.iterdir()) == sorted([fresh, other])


def test_an_unwritable_dir_falls_back_to_inline(start_fake, start_gateway, tmp_path: Path) -> None:
    engine, engine_url = start_fake(model="m")
    shared = tmp_path / "shared"
    url = start_gateway([engine_url], shared_audio_dir=str(shared))
    shared.rmdir()  # e.g. a tmpfs unmounted under the gateway; a full one fails the same way (OSError)
    resp = httpx.post(url + "/v1/chat/completions", timeout=30, json=chat_body("m", audio_part("wav")))
    assert resp.status_code == 200, resp.text
    (part, _text) = engine.bodies[-1]["messages"][0]["content"]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
