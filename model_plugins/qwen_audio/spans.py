"""How many prompt tokens a clip becomes: the published span formula, applied per 30 s piece.

The published encoder hears at most 30 s (3000 mel frames, `n_ctx` 1500 after the stride-2 conv). A longer clip
is split into consecutive pieces of at most 30 s, each its own `<audio>` … `</audio>` span, so every second is
heard (the published tokenizer would cut it at 30 s). Pure Python: the gateway's count (server/families/tokens.py)
must agree with it, and a test checks that it does.
"""

SAMPLE_RATE = 16_000
HOP = 160
PIECE_SAMPLES = 30 * SAMPLE_RATE
"""Longest piece the encoder takes: 30 s."""
MIN_PIECE_SAMPLES = 3 * HOP
"""Shorter pieces are zero-padded to this, the shortest that gives one encoder token (3 mel frames)."""


def span_tokens(n_samples: int) -> int:
    """Tokens of one span (<= 30 s): the published mel_len = L // 160, T = (mel_len - 1) // 2 + 1,
    n = (T - 2) // 2 + 1 encoder tokens, plus the bos and eos that overwrite `<audio>` and `</audio>`.
    30 s -> 750 + 2 = 752."""
    mel_len = max(n_samples, MIN_PIECE_SAMPLES) // HOP
    frames = (mel_len - 1) // 2 + 1
    return (frames - 2) // 2 + 1 + 2


def piece_bounds(n_samples: int) -> list[tuple[int, int]]:
    """[start, end) of each consecutive <= 30 s piece of a clip (one piece for a clip of 30 s or less)."""
    return [(start, min(start + PIECE_SAMPLES, n_samples)) for start in range(0, max(n_samples, 1), PIECE_SAMPLES)]


def clip_spans(n_samples: int) -> list[int]:
    """Tokens of each span of a clip, in order."""
    return [span_tokens(end - start) for start, end in piece_bounds(n_samples)]


def clip_tokens(n_samples: int) -> int:
    """Prompt tokens of a whole clip: the sum of its spans. 45 s -> 752 + 377 = 1129."""
    return sum(clip_spans(n_samples))
