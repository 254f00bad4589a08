"""The issue's workload: clips of seeded synthetic audio, one chat prompt each, greedy.

Every round gets fresh clips (seeded by round), so no engine can answer a round from
its multimodal processor cache or encoder cache; all systems see the same clips in
the same round.
"""

import numpy as np

SAMPLE_RATE = 16000
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
QUESTIONS = ("what do you hear?", "describe the sound.", "caption this clip.", "is there speech in it?")


def clip(seconds: float, seed: int) -> np.ndarray:
    """Varied audio: a chirp, a few harmonics, amplitude modulation and noise; float32 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    f0, f1 = rng.uniform(80, 400), rng.uniform(200, 3000)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(seconds, 1e-3)))
    tone = sum(rng.uniform(0.05, 0.3) / k * np.sin(k * phase) for k in range(1, 4))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 4.0) * t + rng.uniform(0, 2 * np.pi))
    noise = rng.standard_normal(t.size) * rng.uniform(0.002, 0.05)
    return (tone * envelope + noise).astype(np.float32)


def prompt_text(index: int) -> str:
    question = QUESTIONS[index % len(QUESTIONS)]
    return f"<|im_start|>user\n{AUDIO_PLACEHOLDER}{question}<|im_end|>\n<|im_start|>assistant\n"


def clips(count: int, seconds: float, round_seed: int) -> list[np.ndarray]:
    return [clip(seconds, seed=round_seed * 100_003 + i) for i in range(count)]
