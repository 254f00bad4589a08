"""One step of the Qwen-Audio tower: clips -> <= 30 s pieces -> passes of similar length (passes.py), each through
the front end (frontend.py) for its own frames only and the encoder (encoder.py) -> every clip's embedded spans.

No host sync anywhere in the step, so vLLM's async scheduling keeps the device busy: every length is a tensor
shape read on the host, the few per-pass lengths the masks need travel in one pinned, non-blocking copy
(model_plugins/host.py), and no value is read back from the device (no `.tolist()`, `.item()`, `bool(tensor)`).
"""

import torch
import torch.nn.functional as F

from .encoder import QwenAudioEncoder, clip_sizes
from .frontend import frames_needed, log_mel, mel_length
from .passes import plan_passes
from .spans import MIN_PIECE_SAMPLES, clip_tokens, piece_bounds


def split_pieces(waveforms: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Every clip's consecutive <= 30 s pieces (short ones zero-padded to the minimum), and pieces per clip."""
    pieces, counts = [], []
    for waveform in waveforms:
        bounds = piece_bounds(int(waveform.shape[-1]))
        for start, end in bounds:
            piece = waveform[start:end]
            if piece.shape[-1] < MIN_PIECE_SAMPLES:
                piece = F.pad(piece, (0, MIN_PIECE_SAMPLES - piece.shape[-1]))
            pieces.append(piece)
        counts.append(len(bounds))
    return pieces, counts


def embed_pieces(encoder: QwenAudioEncoder, pieces: list[torch.Tensor]) -> list[torch.Tensor]:
    """(samples,) float32 pieces of <= 30 s -> per piece (n_i + 2, output_dim): [bos, encoder frames, eos]."""
    if not pieces:
        return []
    lengths = [int(p.shape[-1]) for p in pieces]
    rows: list[torch.Tensor] = [pieces[0].new_empty(0)] * len(pieces)
    for picked in plan_passes([clip_sizes(mel_length(n))[0] for n in lengths]):
        frames = max(frames_needed(lengths[i]) for i in picked)
        mels, mel_lengths = log_mel([pieces[i] for i in picked], frames)
        for i, out in zip(picked, encoder.encode(mels, mel_lengths), strict=True):
            rows[i] = encoder.frame(out)
    return rows


def embed_clips(encoder: QwenAudioEncoder, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
    """list of (samples,) 16 kHz waveforms -> list of (span tokens of the clip, output_dim): every piece's
    [bos, encoder output, eos], pieces in order."""
    device = encoder.conv1.weight.device
    pieces, counts = split_pieces([w.to(device=device, dtype=torch.float32) for w in waveforms])
    spans = embed_pieces(encoder, pieces)
    out, k = [], 0
    for waveform, count in zip(waveforms, counts, strict=True):
        joined = torch.cat(spans[k : k + count])
        k += count
        expected = clip_tokens(int(waveform.shape[-1]))
        if joined.shape[0] != expected:  # the processor's count and the tower's must agree
            raise RuntimeError(f"audio tower gave {joined.shape[0]} embeddings for a span of {expected}")
        out.append(joined)
    return out
