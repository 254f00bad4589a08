"""One step of the Qwen-Audio tower (tower.py): no host sync, passes of similar length (padding <= 1.25x), and the
same embeddings as the published 30 s front end with every piece encoded alone."""

import pytest
import torch

from model_plugins.qwen_audio import frontend, tower
from model_plugins.qwen_audio.encoder import QwenAudioEncoder, clip_sizes
from model_plugins.qwen_audio.frontend import log_mel, mel_length
from model_plugins.qwen_audio.passes import padding_ratio, plan_passes
from model_plugins.qwen_audio.spans import clip_tokens
from tests.model_plugins.conftest import tone
from tests.model_plugins.qwen_audio.test_encoder import build
from tests.model_plugins.sync_trap import HostSyncError, no_host_sync

SECOND = 16_000
# One 30 s piece next to fifteen 1 s ones (the mix that padded everything to 1500 frames), a 45 s clip (two
# pieces), and odd lengths.
MIX = [30.0] + [1.0] * 15
VARIED = [45.0, 0.01, 0.5, 2.7, 3.33, 10.0, 29.99, 12.3, 1.0, 1.0]


@pytest.fixture(scope="module")
def encoder() -> QwenAudioEncoder:
    return build()


def waves(seconds: list[float]) -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, 200.0 + 37 * i, seed=i)) for i, s in enumerate(seconds)]


def test_a_step_never_makes_the_host_wait_for_the_device(encoder):
    """The whole step (split, front end, passes, encoder) on "meta" tensors inside the sync trap: no value read
    back, no blocking or pageable copy. The code before this change failed here (`torch.tensor(lengths,
    device=...)` in the front end, `mel_lengths.tolist()` and an index tensor built on the device in the encoder)."""
    meta = build().to("meta")
    clips = [torch.zeros(int(s * SECOND), device="meta") for s in [*MIX, *VARIED]]
    frontend._TABLES.pop(torch.device("meta"), None)  # the first step on a device copies the tables there too
    with torch.inference_mode(), no_host_sync():
        out = tower.embed_clips(meta, clips)
    assert [o.shape[0] for o in out] == [clip_tokens(c.shape[0]) for c in clips]


@pytest.mark.parametrize(
    "sync",
    [
        lambda t: torch.tensor([t.shape[0]], device=t.device),
        lambda t: t.sum().tolist(),
        lambda t: t.sum().item(),
        lambda t: bool(t.sum() > 0),
        lambda t: t.cpu(),
        lambda t: t[[0, 2]],
        lambda t: torch.arange(3).to(t.device),
    ],
    ids=["tensor-device", "tolist", "item", "bool", "cpu", "list-index", "blocking-copy"],
)
def test_the_trap_catches_every_kind_of_host_sync(sync):
    with torch.inference_mode(), no_host_sync(), pytest.raises(HostSyncError):
        sync(torch.zeros(4, device="meta"))


def recorded_passes(encoder, monkeypatch, seconds: list[float]) -> list[tuple[int, int, list[int]]]:
    """Run a step; per encoder pass: (pieces, mel frames computed, T of each piece)."""
    passes = []
    original = encoder.encode

    def spy(mels, mel_lengths):
        passes.append((mels.shape[0], mels.shape[2], [clip_sizes(m)[0] for m in mel_lengths]))
        return original(mels, mel_lengths)

    monkeypatch.setattr(encoder, "encode", spy)
    with torch.inference_mode():
        tower.embed_clips(encoder, waves(seconds))
    return passes


@pytest.mark.parametrize("seconds", [MIX, VARIED, [1.0, 1.2, 1.24, 1.26, 1.6, 2.0, 2.5, 3.0]])
def test_padding_stays_within_a_quarter_of_the_real_frames(encoder, monkeypatch, seconds):
    """Encoder frames padded / real <= 1.25 in every pass (MIX: 1.0; before: 16 x 1500 / 2250 = 10.7), and the
    front end computes at most a pass's own frames + 3 per piece (before: 3000 per piece)."""
    passes = recorded_passes(encoder, monkeypatch, seconds)
    for pieces, mel_frames, frames in passes:
        assert pieces * max(frames) <= 1.25 * sum(frames), frames
        assert mel_frames <= 2 * max(frames) + 3
    padded = sum(pieces * max(frames) for pieces, _, frames in passes)
    real = sum(sum(frames) for *_, frames in passes)
    assert padded / real <= 1.25
    if seconds is MIX:
        assert [(p, f) for p, f, _ in passes] == [(1, 3000), (15, 102)]
        assert padded == real == 1500 + 15 * 50


def test_plan_passes_bounds_padding_and_pass_size():
    frames = [1500, 50, 1400, 49, 41, 40, 1200, 1201, 39]
    passes = plan_passes(frames)
    assert passes == [[0, 2, 7, 6], [1, 3, 4, 5], [8]]
    assert padding_ratio(frames, passes) <= 1.25
    assert plan_passes([1500] * 5, budget=3000) == [[0, 1], [2, 3], [4]]
    assert padding_ratio([1500] + [50] * 15, [list(range(16))]) == pytest.approx(16 * 1500 / 2250)  # the old pass


def test_the_step_equals_the_published_front_end_with_each_piece_alone(encoder):
    """Against the published computation: every piece padded to 30 s (3000 mel frames), encoded one at a time."""
    clips = waves(VARIED)
    with torch.inference_mode():
        got = tower.embed_clips(encoder, clips)
        pieces, counts = tower.split_pieces(clips)
        alone = []
        for piece in pieces:
            mels, lengths = log_mel([piece])
            assert mels.shape[2] == 3000
            alone.append(encoder(mels, lengths)[0])
    k = 0
    for clip, count, out in zip(clips, counts, got, strict=True):
        torch.testing.assert_close(out, torch.cat(alone[k : k + count]), rtol=0, atol=1e-5)
        assert out.shape[0] == clip_tokens(clip.shape[0])
        k += count
    assert [mel_length(p.shape[0]) >= 3 for p in pieces]
