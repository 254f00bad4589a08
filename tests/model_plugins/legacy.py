"""The encoder path as it was before the batched front end and bounded chunks (issue 10), kept
as a reference: one STFT per clip, every window of the step in ONE forward, zero-padded to the
longest window and always masked. It drives the plugin's own submodules, so comparing the two
paths isolates batching, packing and chunking."""

import torch
import torch.nn.functional as F

from model_plugins.midashenglm.encoder import DashengEncoder


def per_clip_log_mel(encoder: DashengEncoder, waveform: torch.Tensor) -> torch.Tensor:
    """(samples,) -> (n_mels, frames) dB, float32: torch.stft with its own centring, one clip."""
    c = encoder.config
    window, bank = encoder.front_end.tables(waveform.device)
    spectrum = torch.stft(
        waveform.float(), n_fft=c.n_fft, hop_length=c.hop_length, window=window,
        center=c.center, pad_mode="reflect", onesided=True, return_complex=True,
    )  # fmt: skip
    power = spectrum.real.square() + spectrum.imag.square()
    log_mel = 10.0 * torch.log10(torch.clamp(bank.T @ power, min=1e-10))
    return torch.maximum(log_mel, log_mel.amax() - c.top_db)


def legacy_encode(encoder: DashengEncoder, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
    """list of (samples,) -> list of (patches_i, embed_dim), the pre-issue-10 way."""
    c = encoder.config
    target, per_patch = c.target_length, c.frames_per_patch
    chunks, valid_frames, patches_per_clip = [], [], []
    for waveform in waveforms:
        mel = per_clip_log_mel(encoder, waveform)
        patches = mel.shape[-1] // per_patch
        patches_per_clip.append(patches)
        mel = mel[:, : patches * per_patch]
        for start in range(0, mel.shape[-1], target):
            chunk = mel[:, start : start + target]
            valid_frames.append(chunk.shape[-1])
            chunks.append(chunk)
    width = max(valid_frames)
    mels = torch.stack([F.pad(chunk, (0, width - chunk.shape[-1])) for chunk in chunks]).unsqueeze(1)
    key_mask = torch.arange(width // per_patch)[None, :] < (torch.tensor(valid_frames) // per_patch)[:, None]
    normed = encoder.init_bn(mels.transpose(1, 2)).transpose(1, 2).to(encoder.dtype)
    features = encoder.forward_windows(normed, key_mask)
    flat, per_window = features.flatten(0, 1), features.shape[1]
    outputs, window = [], 0
    for patches in patches_per_clip:
        outputs.append(flat[window * per_window : window * per_window + patches])
        window += -(-patches // per_window)
    return outputs
