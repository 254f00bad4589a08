"""Plain re-computations of Qwen-Audio's audio path from the published definitions, not from the plugin's code.

The front end in numpy/float64 (explicit framing, rfft, librosa's Slaney mel definition written out); the encoder
in eager torch functional ops straight over the raw state dict, one clip at a time with no padding and no masks.
"""

import numpy as np
import torch
import torch.nn.functional as F

SR, N_FFT, HOP, N_MELS, N_SAMPLES = 16_000, 400, 160, 80, 480_000


def slaney_hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-300) / 1000.0) / (np.log(6.4) / 27.0), linear)


def slaney_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), mel * 200.0 / 3)


def slaney_mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) by its definition: (80, 201) float64, filter by filter."""
    bins = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    edges = slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(SR / 2), N_MELS + 2))
    filters = np.zeros((N_MELS, bins.size))
    for m in range(N_MELS):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        up = (bins - left) / (centre - left)
        down = (right - bins) / (right - centre)
        filters[m] = np.maximum(0.0, np.minimum(up, down)) * 2.0 / (right - left)
    return filters


def reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """(samples <= 480000,) -> (80, 3000) float64: pad to 30 s, centred reflect-padded frames, periodic Hann,
    |rfft|^2, mel, log10 clamp 1e-10, floor max - 8, (x + 4) / 4, last frame dropped."""
    x = np.zeros(N_SAMPLES)
    x[: waveform.size] = waveform
    x = np.pad(x, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = N_SAMPLES // HOP  # 3001 centred frames, the last dropped
    starts = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    power = np.abs(np.fft.rfft(x[starts] * window, axis=-1)) ** 2  # (3000, 201)
    log_spec = np.log10(np.maximum(slaney_mel_filters() @ power.T, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def reference_encode(sd: dict[str, torch.Tensor], mel: torch.Tensor, mel_len: int, heads: int) -> torch.Tensor:
    """One clip, eager from the weights: (80, >= mel_len) log-mel -> (n + 2, output_dim) = [bos, n frames, eos].

    The clip alone, as the published model runs a one-audio prompt: convs over its first 2T frames, all T frames
    attended to, AvgPool1d(2), ln_post, proj, the first n kept."""
    frames = (mel_len - 1) // 2 + 1
    keep = (frames - 2) // 2 + 1
    x = mel[None, :, : 2 * frames].to(sd["conv1.weight"].dtype)
    x = F.gelu(F.conv1d(x, sd["conv1.weight"], sd["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["conv2.weight"], sd["conv2.bias"], stride=2, padding=1))
    x = x[0].T + sd["positional_embedding"][:frames]  # (T, width)
    width = x.shape[1]
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for i in blocks:
        p = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (width,), p["attn_ln.weight"], p["attn_ln.bias"])
        q = (h @ p["attn.query.weight"].T + p["attn.query.bias"]).view(frames, heads, -1).transpose(0, 1)
        k = (h @ p["attn.key.weight"].T).view(frames, heads, -1).transpose(0, 1)
        v = (h @ p["attn.value.weight"].T + p["attn.value.bias"]).view(frames, heads, -1).transpose(0, 1)
        scale = q.shape[-1] ** -0.25  # Whisper scales q and k each by d^-1/4
        w = torch.softmax((q * scale) @ (k * scale).transpose(1, 2), dim=-1)
        a = (w @ v).transpose(0, 1).reshape(frames, width)
        x = x + a @ p["attn.out.weight"].T + p["attn.out.bias"]
        h = F.layer_norm(x, (width,), p["mlp_ln.weight"], p["mlp_ln.bias"])
        h = F.gelu(h @ p["mlp.0.weight"].T + p["mlp.0.bias"])
        x = x + h @ p["mlp.2.weight"].T + p["mlp.2.bias"]
    x = F.avg_pool1d(x.T[None], 2, 2)[0].T  # (T // 2, width)
    x = F.layer_norm(x, (width,), sd["ln_post.weight"], sd["ln_post.bias"])
    x = x @ sd["proj.weight"].T + sd["proj.bias"]
    bos_eos = sd["audio_bos_eos_token.weight"]
    return torch.cat([bos_eos[:1], x[:keep], bos_eos[1:]])
