"""How many prompt tokens one audio clip becomes, per model family: the audio part of the gateway's context budget.

Each formula maps a clip's length in samples at 16 kHz (what the gateway hands every engine) to the placeholder
tokens the engine's processor expands it to. Each family's entry in the registry (server/families/registry.py)
holds its ``Formula``; a served model's facts name theirs (``audio_tokens``, a key of the registry's ``FORMULAS``).
Clips longer than a model's window never reach these formulas: the gateway refuses them first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

AudioTokenCount = Callable[[int], int]
"""16 kHz samples of one clip → audio tokens in the prompt."""

HOP = 160
"""Mel hop of every family's front end (10 ms at 16 kHz)."""


def midashenglm(n_samples: int) -> int:
    """MiDashengLM (model_plugins/midashenglm/processing.py): a centred STFT (n_fft 512, hop 160) gives mel frames,
    4 frames make a patch and the projector joins 5 patches; a shorter clip is padded to one token. 30 s → 150."""
    return max(1, ((n_samples + 512 - 512) // HOP + 1) // 4 // 5)


def whisper(n_samples: int) -> int:
    """Qwen2-Audio and Qwen2.5-Omni (vLLM's ``_get_feat_extract_output_lengths``): Whisper features with one mel
    frame per started hop (the attention mask is the sample mask taken every 160th sample), a stride-2 conv, then
    a stride-2 pool. 25 tokens per second: 5 s → 125, 30 s → 750."""
    frames = -(-n_samples // HOP)
    return max(0, ((frames - 1) // 2 + 1 - 2) // 2 + 1)


def qwen3_omni(n_samples: int) -> int:
    """Qwen3-Omni (vLLM's ``qwen3_omni_moe_thinker._get_feat_extract_output_lengths``): the clip is padded to whole
    hops; every 100 mel frames (1 s) give 13 tokens, the remainder three stride-2 convs. 5 s → 65, 45 s → 585."""
    frames = -(-n_samples // HOP)
    rest = (frames % 100 - 1) // 2 + 1
    return max(0, ((rest - 1) // 2 + 1 - 1) // 2 + 1 + (frames // 100) * 13)


def qwen_audio(n_samples: int) -> int:
    """Qwen-Audio-Chat (model_plugins/qwen_audio/spans.py): the clip in consecutive pieces of at most 30 s, each a
    span of n + 2 tokens with mel_len = L // 160, T = (mel_len - 1) // 2 + 1, n = (T - 2) // 2 + 1 (a piece under
    480 samples is padded to it). 30 s → 752, 45 s → 752 + 377."""
    piece = 30 * 16_000
    total = 0
    for start in range(0, max(n_samples, 1), piece):
        mel_len = max(min(piece, n_samples - start), 3 * HOP) // HOP
        total += ((mel_len - 1) // 2 + 1 - 2) // 2 + 1 + 2
    return total


def uncounted(n_samples: int) -> int:
    """A model whose formula the gateway does not know: 0 tokens, so audio never causes a refusal."""
    return 0


class Formula(NamedTuple):
    """A token formula and the name ``ALM_MODEL_FACTS`` / ``audio_tokens`` call it by."""

    name: str
    count: AudioTokenCount


MIDASHENGLM = Formula("midashenglm", midashenglm)
WHISPER = Formula("whisper", whisper)
QWEN3_OMNI = Formula("qwen3-omni", qwen3_omni)
QWEN_AUDIO = Formula("qwen-audio", qwen_audio)
UNCOUNTED = Formula("none", uncounted)
