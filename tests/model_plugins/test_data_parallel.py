"""--mm-encoder-tp-mode data on CPU: two tensor-parallel ranks (gloo), each encoding its share
of the clips with the whole encoder, then an all_gather; every rank ends with every clip's
embeddings, equal to one process encoding them all."""

import subprocess
import sys

import pytest
import torch

from alm.processes import free_port
from tests.model_plugins.conftest import tone

SECONDS = [25.0, 2.0, 3.0, 12.0, 1.0]  # 3, 1, 1, 2, 1 windows: vLLM balances them 4 | 4


@pytest.fixture(scope="module")
def ranks(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    for rank in range(2):
        command = [sys.executable, "-m", "tests.model_plugins.dp_worker", str(tiny_checkpoint), str(rank), "2", init]
        with open(out / f"rank{rank}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            procs.append(
                subprocess.Popen([*command, str(out / f"rank{rank}.pt"), *map(str, SECONDS)], stdout=log, stderr=log)
            )
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(out / f"rank{r}.log").read_text(errors="replace")[-3000:] for r in range(2)]
    assert codes == [0, 0], logs
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_the_model_opts_in(tiny_model):
    assert type(tiny_model).supports_encoder_tp_data is True
    assert tiny_model.encoder_data_parallel is False  # one rank: nothing to shard


def test_each_rank_encodes_a_share_and_ends_with_every_clip(ranks, tiny_model):
    clips = [torch.from_numpy(tone(s, 150.0 + 40 * i, seed=50 + i)) for i, s in enumerate(SECONDS)]
    with torch.inference_mode():
        expected = tiny_model.embed_audio(clips)
    assert all(r["data_parallel"] for r in ranks)
    shares = [sorted(r["local_lengths"]) for r in ranks]
    assert all(shares) and sorted(shares[0] + shares[1]) == sorted(c.shape[0] for c in clips)
    for rank in ranks:
        for got, want in zip(rank["outputs"], expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
