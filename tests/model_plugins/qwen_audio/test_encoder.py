"""The Qwen-Audio audio tower on a seeded tiny config: eager re-computation from the raw weights, the published span
formula, batch invariance, masking, bf16 against float32, and the weight table's errors."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_plugins.qwen_audio import passes as passes_module
from model_plugins.qwen_audio.audio_weights import audio_name, published_shapes
from model_plugins.qwen_audio.encoder import QwenAudioEncoder, clip_sizes, sinusoids
from model_plugins.qwen_audio.frontend import log_mel
from model_plugins.qwen_audio.spans import span_tokens
from tests.model_plugins.conftest import tone
from tests.model_plugins.qwen_audio.reference import reference_encode

TINY = SimpleNamespace(
    n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2, output_dim=128, avg_pool=True, add_audio_bos_eos_token=True
)
PUBLISHED = SimpleNamespace(**{**vars(TINY), "n_state": 1280, "n_head": 20, "n_layer": 32, "output_dim": 4096})
# 0.5 / 1 / 10 / 29.99 / 30 s, and 3.33 s (odd mel_len: the convs see one frame past mel_len).
SECONDS = [0.5, 1.0, 10.0, 29.99, 30.0, 3.33]
EXPECTED_ROWS = [14, 27, 252, 752, 752, 85]


def random_weights(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Published names -> seeded float32 tensors: unit-scale linears, norms away from 1/0 (so a swapped weight and
    bias shows), a perturbed positional table (so ours vs the checkpoint's shows)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in published_shapes(config).items():
        noise = torch.randn(shape, generator=gen)
        if name == "positional_embedding":
            weights[name] = sinusoids(*shape).float() + 0.1 * noise
        elif name.endswith("ln.weight") or name == "ln_post.weight":
            weights[name] = 1.0 + 0.2 * noise
        elif len(shape) == 1:
            weights[name] = 0.1 * noise
        else:
            fan_in = int(np.prod(shape[1:])) if not name.startswith("audio_bos") else 1
            weights[name] = noise / fan_in**0.5
    return weights


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(dtype: torch.dtype = torch.float32, weights: dict[str, torch.Tensor] | None = None) -> QwenAudioEncoder:
    """Built the way vLLM builds a model: under the model dtype as default dtype, then weights loaded."""
    with default_dtype(dtype):
        encoder = QwenAudioEncoder(TINY, prefix="audio")
    encoder.load_weights((weights or random_weights(TINY)).items())
    return encoder.eval()


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_weights(TINY)


@pytest.fixture(scope="module")
def encoder(weights) -> QwenAudioEncoder:
    return build(weights=weights)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    waves = [torch.from_numpy(tone(s, freq=300.0 + 150 * i, seed=i)) for i, s in enumerate(SECONDS)]
    return log_mel(waves)


def test_rows_follow_the_published_span_formula(encoder, batch):
    mels, lengths = batch
    with torch.inference_mode():
        out = encoder(mels, lengths)
    assert [o.shape[0] for o in out] == EXPECTED_ROWS
    assert [clip_sizes(m)[1] + 2 for m in lengths] == EXPECTED_ROWS
    # The processor's prompt span (spans.py, pure Python) must agree with what the tower gives.
    assert [span_tokens(round(s * 16000)) for s in SECONDS] == EXPECTED_ROWS
    assert all(o.shape[1] == TINY.output_dim for o in out)


def test_matches_the_eager_reference_from_the_raw_weights(encoder, weights, batch):
    """Six lengths in one masked batch against one-clip-at-a-time eager ops: float32, max |diff| <= 2e-5
    (measured 2.1e-6 on outputs up to ~4.2; without the key mask it is ~3.6)."""
    mels, lengths = batch
    with torch.inference_mode():
        out = encoder(mels, lengths)
        for i, mel_len in enumerate(lengths):
            expected = reference_encode(weights, mels[i], mel_len, heads=TINY.n_head)
            torch.testing.assert_close(out[i], expected, rtol=0, atol=2e-5, msg=f"clip {i} ({SECONDS[i]} s)")
            torch.testing.assert_close(out[i][[0, -1]], weights["audio_bos_eos_token.weight"], rtol=0, atol=0)


def test_a_clip_alone_equals_the_same_clip_in_a_batch(encoder, batch):
    mels, lengths = batch
    with torch.inference_mode():
        together = encoder(mels, lengths)
        for i in range(len(SECONDS)):
            alone = encoder(mels[i : i + 1], lengths[i : i + 1])[0]
            torch.testing.assert_close(together[i], alone, rtol=0, atol=1e-5, msg=f"clip {i}")


def test_passes_of_sorted_clips_keep_the_input_order(encoder, batch, monkeypatch):
    """With one 30 s clip's frames per pass the six clips run in five passes, longest first; outputs come back in
    input order."""
    mels, lengths = batch
    with torch.inference_mode():
        whole = encoder(mels, lengths)
        monkeypatch.setattr(passes_module, "FRAMES_PER_FORWARD", 1500)
        split = encoder(mels, lengths)
    assert [o.shape[0] for o in split] == EXPECTED_ROWS
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_padding_frames_do_not_reach_the_outputs(encoder, batch):
    """Mel frames from 2T on (T = frames after the convs) may hold anything: the outputs stay the same."""
    mels, lengths = batch
    noisy = mels.clone()
    for i, mel_len in enumerate(lengths):
        noisy[i, :, 2 * clip_sizes(mel_len)[0] :] = torch.randn_like(noisy[i, :, 2 * clip_sizes(mel_len)[0] :]) * 5
    with torch.inference_mode():
        for a, b in zip(encoder(mels, lengths), encoder(noisy, lengths), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bf16_tower_stays_close_to_float32(weights, batch):
    """Built under a bf16 default dtype: the weights and outputs are bf16, the front end's input stays float32, and
    the outputs stay within 0.1 of float32 (measured max 0.032 on outputs up to ~4.2: about twice bf16 rounding)."""
    mels, lengths = batch
    assert mels.dtype == torch.float32
    exact, bf16 = build(weights=weights), build(torch.bfloat16, weights)
    assert bf16.conv1.weight.dtype == bf16.positional_embedding.dtype == torch.bfloat16
    with torch.inference_mode():
        want, got = exact(mels, lengths), bf16(mels, lengths)
    errors = [(g.float() - w).abs().max().item() for g, w in zip(got, want, strict=True)]
    assert all(g.dtype == torch.bfloat16 for g in got)
    assert max(errors) <= 0.1, errors


def test_published_shapes_cover_the_module_exactly():
    for config in (TINY, PUBLISHED):
        shapes = published_shapes(config)
        assert all(audio_name(name) == name for name in shapes)  # the table is one to one
        if config is TINY:
            module = QwenAudioEncoder(TINY)
            state = module.state_dict()
            assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    real = published_shapes(PUBLISHED)
    assert "blocks.31.attn.key.weight" in real and "blocks.0.attn.key.bias" not in real
    # Whisper-large-v2's encoder (~635 M) + proj and bos/eos to the 4096-wide LLM.
    assert 630e6 < sum(int(np.prod(s)) for s in real.values()) < 650e6


def test_every_published_name_loads(weights):
    module = QwenAudioEncoder(TINY)
    assert module.load_weights(weights.items()) == set(published_shapes(TINY))
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


@pytest.mark.parametrize("missing", ["blocks.0.attn.query.weight", "ln_post.bias", "audio_bos_eos_token.weight"])
def test_a_missing_tensor_fails_naming_it(weights, missing):
    kept = [(k, v) for k, v in weights.items() if k != missing]
    with pytest.raises(ValueError, match=f"lacks audio tower tensors 'transformer.audio.{missing}'"):
        QwenAudioEncoder(TINY).load_weights(kept)


def test_a_checkpoint_without_the_sinusoids_keeps_ours(weights):
    module = QwenAudioEncoder(TINY)
    loaded = module.load_weights((k, v) for k, v in weights.items() if k != "positional_embedding")
    assert "positional_embedding" in loaded
    torch.testing.assert_close(module.positional_embedding, sinusoids(1500, 64).float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("blocks.0.attn.key.bias", (64,), "unexpected .*'transformer.audio.blocks.0.attn.key.bias'"),
        ("blocks.2.attn.query.weight", (64, 64), "unexpected .*'transformer.audio.blocks.2.attn.query.weight'"),
        ("encoder.conv1.weight", (64, 80, 3), "unexpected .*'transformer.audio.encoder.conv1.weight'"),
        ("proj.weight", (64, 64), r"'transformer.audio.proj.weight' has shape \(64, 64\), expected \(128, 64\)"),
        ("conv1.bias", (64,), "'transformer.audio.conv1.bias' appears twice"),
    ],
)
def test_a_bad_tensor_fails_naming_it(weights, name, shape, message):
    items = [(k, v) for k, v in weights.items() if k != "proj.weight" or name != "proj.weight"]
    with pytest.raises(ValueError, match=message):
        QwenAudioEncoder(TINY).load_weights([*items, (name, torch.zeros(shape))])


def test_bad_lengths_are_refused(encoder, batch):
    mels, _ = batch
    with pytest.raises(ValueError, match="mel_lengths"):
        encoder(mels[:1], [3001])
    with pytest.raises(ValueError, match="mel_lengths"):
        encoder(mels[:1], [0])
