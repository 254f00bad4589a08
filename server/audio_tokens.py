"""How many prompt tokens one audio clip becomes, per model family: the audio part of the gateway's context budget.

Each formula maps a clip's length in samples at 16 kHz (what the gateway hands every engine) to the placeholder
tokens the engine's processor expands it to. ``Settings.audio_token_model`` picks one by name; per-model audio facts
(a formula per served model) can later key the same table by model.
"""

from __future__ import annotations

from collections.abc import Callable

AudioTokenCount = Callable[[int], int]
"""16 kHz samples of one clip → audio tokens in the prompt."""


def midashenglm(n_samples: int) -> int:
    """MiDashengLM (model_plugins/midashenglm/processing.py): a centred STFT (n_fft 512, hop 160) gives mel frames,
    4 frames make a patch and the projector joins 5 patches; a shorter clip is padded to one token. 30 s → 150."""
    return max(1, ((n_samples + 512 - 512) // 160 + 1) // 4 // 5)


def uncounted(n_samples: int) -> int:
    """A model whose formula the gateway does not know: 0 tokens, so audio never causes a refusal."""
    return 0


FORMULAS: dict[str, AudioTokenCount] = {"midashenglm": midashenglm, "none": uncounted}
"""Values of ``ALM_AUDIO_TOKEN_MODEL``."""
