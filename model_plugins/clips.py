"""The checks every audio plugin's processor makes on the clips vLLM hands it (parsed, resampled waveforms)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def checked_samples(clip: npt.ArrayLike, index: int, longest: int, sample_rate: int) -> np.ndarray:
    """Clip ``index`` as float32 mono samples; a ValueError (vLLM answers it with a 400) if it is empty, longer
    than ``longest`` samples (the engine's max_audio_seconds) or not finite."""
    samples = np.asarray(clip, dtype=np.float32).reshape(-1)
    if samples.size == 0:
        raise ValueError(f"audio clip {index} has no samples")
    if samples.size > longest:
        raise ValueError(
            f"audio clip {index} is {samples.size / sample_rate:.2f} s long; this engine "
            f"serves clips up to {longest / sample_rate:.0f} s (max_audio_seconds)"
        )
    if not np.isfinite(samples).all():
        raise ValueError(f"audio clip {index} contains NaN or infinite samples")
    return samples
