"""Data-parallel audio encoders on CPU: two tensor-parallel ranks (gloo), each encoding its share of
the clips with the whole encoder, then an all_gather; every rank ends with every clip's
embeddings, equal to one process encoding them all. MiDashengLM with --mm-encoder-tp-mode data,
MiDashengLM whose encoder heads do not divide over the ranks (falls back to data parallel, as
vLLM's ViTs do), and Qwen-Audio (its replicated tower is always sharded)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alm.processes import free_port
from model_plugins.qwen_audio.tiny import make as make_qwen_audio
from tests.model_plugins.conftest import load_model, tone

# vLLM's start-up profile with these: 3 dummy clips of 30 s (450 // 150 tokens), 3 windows each.
PROFILE_ARGS = {"hf_overrides": {"max_audio_seconds": 30}, "max_num_batched_tokens": 450}
SECONDS = [25.0, 2.0, 3.0, 12.0, 1.0]  # 3, 1, 1, 2, 1 windows: vLLM balances them 4 | 4
QWEN_SECONDS = [45.0, 2.0, 3.0, 12.0, 1.0]  # 1129, 52, 77, 302, 27 tokens


def run_ranks(checkpoint: Path, mode: str, seconds: list[float] | list[str], out: Path) -> list[dict]:
    """Two ranks of tests/model_plugins/dp_worker.py (SECONDS... or `profile ENGINE_ARGS`); each one's outputs."""
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    for rank in range(2):
        command = [sys.executable, "-m", "tests.model_plugins.dp_worker", str(checkpoint), str(rank), "2", init, mode]
        with open(out / f"rank{rank}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            procs.append(
                subprocess.Popen([*command, str(out / f"rank{rank}.pt"), *map(str, seconds)], stdout=log, stderr=log)
            )
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(out / f"rank{r}.log").read_text(errors="replace")[-3000:] for r in range(2)]
    assert codes == [0, 0], logs
    return [torch.load(out / f"rank{r}.pt") | {"log": logs[r]} for r in range(2)]


def clips(seconds: list[float]) -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, 150.0 + 40 * i, seed=50 + i)) for i, s in enumerate(seconds)]


def assert_shared_and_equal(ranks: list[dict], model: torch.nn.Module, seconds: list[float]) -> None:
    """Both ranks sharded (each encoded a non-empty share, together every clip once) and hold every clip's
    embeddings equal to one process encoding them all (float32, 1e-5)."""
    waves = clips(seconds)
    with torch.inference_mode():
        expected = model.embed_audio(waves)
    assert all(r["data_parallel"] for r in ranks)
    shares = [sorted(r["local_lengths"]) for r in ranks]
    assert all(shares) and sorted(shares[0] + shares[1]) == sorted(c.shape[0] for c in waves)
    for rank in ranks:
        for got, want in zip(rank["outputs"], expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def ranks(tiny_checkpoint, tmp_path_factory):
    return run_ranks(tiny_checkpoint, "data", SECONDS, tmp_path_factory.mktemp("dp"))


@pytest.fixture(scope="module")
def one_head_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with 1 encoder head (same tensors): 1 % 2 ranks != 0."""
    out = tmp_path_factory.mktemp("one-head") / "ckpt"
    shutil.copytree(tiny_checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config["audio_encoder_config"]["num_heads"] = 1
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_the_model_opts_in(tiny_model):
    assert type(tiny_model).supports_encoder_tp_data is True
    assert tiny_model.encoder_data_parallel is False  # one rank: nothing to shard


def test_each_rank_encodes_a_share_and_ends_with_every_clip(ranks, tiny_model):
    assert_shared_and_equal(ranks, tiny_model, SECONDS)


def test_heads_that_do_not_divide_over_the_ranks_fall_back_to_data_parallel(one_head_checkpoint, tmp_path):
    """--mm-encoder-tp-mode weights (the default) with 1 head over 2 ranks: sharding the heads would raise; the
    encoder runs data-parallel instead, with a warning, and gives the one-process result."""
    ranks = run_ranks(one_head_checkpoint, "weights", SECONDS, tmp_path)
    assert all("falling back to a data-parallel audio encoder" in r["log"] for r in ranks)
    assert_shared_and_equal(ranks, load_model(one_head_checkpoint), SECONDS)


def test_qwen_audio_tower_is_sharded_over_tensor_parallel_ranks(tmp_path_factory):
    """Qwen-Audio's tower is whole on every rank: with 2 ranks (default mode) each encodes a share of the clips."""
    checkpoint = make_qwen_audio(tmp_path_factory.mktemp("qwen-audio") / "tiny", seed=0)
    ranks = run_ranks(checkpoint, "weights", QWEN_SECONDS, tmp_path_factory.mktemp("qwen-dp"))
    model = load_model(checkpoint)
    assert type(model).supports_encoder_tp_data is True and model.encoder_data_parallel is False
    assert_shared_and_equal(ranks, model, QWEN_SECONDS)


def test_each_rank_runs_at_most_the_windows_it_profiled(tiny_checkpoint, tmp_path):
    """vLLM's start-up profile (its own MultiModalBudget: 3 dummy clips of the longest length) shards its clips over
    the ranks like any step: 2 | 1, i.e. 6 | 3 windows. Each rank's limit per forward, and its largest encoder CUDA
    graph, is what THAT rank encoded there (before: 9 windows on both, the whole profile's)."""
    ranks = run_ranks(tiny_checkpoint, "data", ["profile", json.dumps(PROFILE_ARGS)], tmp_path)
    profiled = [sum(-(-((n // 160 + 1) // 4) // 252) for n in r["local_lengths"]) for r in ranks]
    assert sorted(profiled) == [3, 6]
    for rank, windows in zip(ranks, profiled, strict=True):
        assert rank["max_windows"] == windows
        assert rank["graph_budget_range"][1] == windows * 252  # patches
