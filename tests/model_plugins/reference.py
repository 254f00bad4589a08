"""Plain eager re-computations of MiDashengLM's audio path, straight from the weights.

Written from the published definitions, not from the plugin's code: numpy/float64 for
the front end, one clip at a time, windows of different lengths run separately, no
padding, no masks, no vLLM layers. Tests compare the plugin against these.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def reference_log_mel(waveform: np.ndarray, enc: dict) -> np.ndarray:
    """(samples,) -> (n_mels, frames) in dB, float64."""
    n_fft, hop, n_mels, sr = enc["n_fft"], enc["hop_length"], enc["n_mels"], enc["sample_rate"]
    x = np.pad(waveform.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = 1 + (x.size - n_fft) // hop
    segments = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(frames)])
    power = np.abs(np.fft.rfft(segments, axis=-1)) ** 2  # (frames, n_fft // 2 + 1)

    def mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(enc["f_min"]), mel(enc["f_max"]), n_mels + 2))
    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    filters = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - left) / (centre - left)
        falling = (right - bins) / (right - centre)
        filters[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    db = 10.0 * np.log10(np.maximum(filters @ power.T, 1e-10))
    return np.maximum(db, db.max() - 120.0)


def _layer_norm(x, tensors, name):
    return F.layer_norm(x, x.shape[-1:], tensors[f"{name}.weight"], tensors[f"{name}.bias"], eps=1e-6)


def _block(x: torch.Tensor, tensors: dict, name: str, heads: int) -> torch.Tensor:
    t, d = x.shape
    h = _layer_norm(x, tensors, f"{name}.norm1")
    q, k, v = (h @ tensors[f"{name}.attn.qkv.weight"].T + tensors[f"{name}.attn.qkv.bias"]).split(d, dim=-1)
    q, k, v = (z.reshape(t, heads, d // heads).transpose(0, 1) for z in (q, k, v))
    attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // heads), dim=-1) @ v
    out = attention.transpose(0, 1).reshape(t, d) @ tensors[f"{name}.attn.proj.weight"].T
    x = x + tensors.get(f"{name}.ls1.gamma", 1.0) * (out + tensors[f"{name}.attn.proj.bias"])
    h = _layer_norm(x, tensors, f"{name}.norm2")
    h = F.gelu(h @ tensors[f"{name}.mlp.fc1.weight"].T + tensors[f"{name}.mlp.fc1.bias"])
    h = h @ tensors[f"{name}.mlp.fc2.weight"].T + tensors[f"{name}.mlp.fc2.bias"]
    return x + tensors.get(f"{name}.ls2.gamma", 1.0) * h


def reference_encoder(waveform: np.ndarray, tensors: dict, config: dict) -> torch.Tensor:
    """One clip -> (patches, embed_dim), window by window as the original Dasheng does."""
    enc = config["audio_encoder_config"]
    mel = torch.from_numpy(reference_log_mel(waveform, enc)).float()
    p = "audio_encoder"
    scale = tensors[f"{p}.init_bn.weight"] / torch.sqrt(tensors[f"{p}.init_bn.running_var"] + 1e-5)
    mel = (mel - tensors[f"{p}.init_bn.running_mean"][:, None]) * scale[:, None] + tensors[f"{p}.init_bn.bias"][:, None]
    patches = F.conv2d(
        mel[None, None],
        tensors[f"{p}.patch_embed.proj.weight"],
        tensors[f"{p}.patch_embed.proj.bias"],
        stride=tuple(enc["patch_stride"]),
    )  # fmt: skip  (1, dim, 1, patches)
    outputs = []
    for window in patches.split(enc["target_length"] // enc["patch_stride"][1], dim=-1):
        x = window + tensors[f"{p}.time_pos_embed"][..., : window.shape[-1]] + tensors[f"{p}.freq_pos_embed"]
        x = x.flatten(2)[0].T  # (patches, dim)
        for i in range(enc["depth"]):
            x = _block(x, tensors, f"{p}.blocks.{i}", enc["num_heads"])
        outputs.append(_layer_norm(x, tensors, f"{p}.norm"))
    return torch.cat(outputs)


def reference_audio_embeddings(waveform: np.ndarray, tensors: dict, config: dict) -> torch.Tensor:
    """One clip -> (tokens, text_hidden): encoder, then 5 frames concatenated -> MLP."""
    frames = reference_encoder(waveform, tensors, config)
    k = config["subsample_factor"]
    grouped = frames[: frames.shape[0] // k * k].reshape(-1, k * frames.shape[1])
    hidden = F.gelu(grouped @ tensors["audio_projector.net.0.weight"].T + tensors["audio_projector.net.0.bias"])
    return hidden @ tensors["audio_projector.net.2.weight"].T + tensors["audio_projector.net.2.bias"]
