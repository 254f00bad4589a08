"""Synthesised test audio (no downloads): tones, noise and a speech-like signal, encoded in memory;
and OpenAI request bodies carrying it."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf

_SF_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


def tone(seconds: float = 1.0, rate: int = 16_000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """(frames, channels) float32 sine, each channel a different pitch."""
    t = np.arange(int(seconds * rate)) / rate
    cols = [0.3 * np.sin(2 * np.pi * freq * (1 + 0.5 * c) * t) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def speechlike(seconds: float = 10.0, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """(frames, 1) float32: a gliding voiced source through three formants, syllable-rate envelope, noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    spec = np.fft.rfft(voiced)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    shape = sum(np.exp(-(((freqs - fc) / bw) ** 2)) for fc, bw in ((700, 150), (1200, 200), (2600, 300)))
    formed = np.fft.irfft(spec * shape, n)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    y = formed / (np.abs(formed).max() + 1e-9) * envelope * 0.5 + 0.01 * rng.standard_normal(n)
    return y.astype(np.float32)[:, None]


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """(frames, channels) float32 → file bytes: wav/flac/ogg via libsndfile, mp3/m4a (AAC)/aac (ADTS)/webm (Opus,
    48 kHz only) via PyAV."""
    if fmt in _AV_FORMATS:
        return _encode_av(samples, rate, fmt)
    container, subtype = _SF_FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=container, subtype=subtype)
    return buf.getvalue()


_AV_FORMATS = {
    "mp3": ("mp3", "libmp3lame"),
    "m4a": ("ipod", "aac"),
    "aac": ("adts", "aac"),
    "webm": ("webm", "libopus"),
}


def _encode_av(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    import av

    buf = io.BytesIO()
    channels = samples.shape[1]
    container, codec = _AV_FORMATS[fmt]
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono" if channels == 1 else "stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def audio_part(fmt: str = "wav", seconds: float = 1.0, rate: int = 16_000, channels: int = 1) -> dict:
    data = base64.b64encode(encode(tone(seconds, rate, channels), rate, fmt)).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def chat_body(model: str, *parts: dict, **extra) -> dict:
    content = [*parts, {"type": "text", "text": "What do you hear?"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
