"""Audio ingest unit tests: formats × rates × channels, normalisation, limits, and the lossless forward format."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from server.errors import InvalidAudio, PayloadTooLarge
from server.ingest.audio.clip import (
    TARGET_RATE,
    AudioLimits,
    decode_audio,
    decode_base64,
    encode_wav,
    encode_wav_base64,
)
from tests.support.audio_synth import encode, tone

LIMITS = AudioLimits(max_bytes=2_000_000, max_seconds=30.0, min_seconds=0.2)
RATES = [8_000, 22_050, 44_100, 48_000]
FORMATS = ["wav", "flac", "ogg", "mp3"]


def dominant_hz(samples: np.ndarray, rate: int = TARGET_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_decodes_to_16k_mono_float32(fmt: str, rate: int, channels: int) -> None:
    raw = encode(tone(1.0, rate, channels, freq=440.0), rate, fmt)
    clip = decode_audio(raw, LIMITS, "p")
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.source_rate == rate and clip.source_channels == channels
    assert abs(clip.seconds - 1.0) < 0.1  # codecs pad a few frames
    # Stereo is averaged: channel 0 plays 440 Hz, channel 1 660 Hz; both survive at half amplitude.
    assert abs(dominant_hz(clip.samples) - 440.0) < 5.0 or channels == 2
    assert np.isfinite(clip.samples).all()


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("fmt", "rate"), [("m4a", 44_100), ("aac", 44_100), ("webm", 48_000)])
def test_ffmpeg_containers(fmt: str, rate: int, channels: int) -> None:
    """libsndfile cannot read AAC (in MP4 or ADTS) or Opus in WebM; FFmpeg does, with the same normalisation."""
    clip = decode_audio(encode(tone(1.0, rate, channels), rate, fmt), LIMITS, "p")
    assert clip.source_rate == rate and clip.source_channels == channels
    assert abs(clip.seconds - 1.0) < 0.1
    assert abs(dominant_hz(clip.samples) - 440.0) < 5.0 or channels == 2


def test_stereo_is_averaged_exactly() -> None:
    stereo = tone(1.0, 16_000, 2)
    clip = decode_audio(encode_wav_float(stereo, 16_000), LIMITS, "p")
    np.testing.assert_allclose(clip.samples, stereo.mean(axis=1), atol=1e-6)


def encode_wav_float(samples: np.ndarray, rate: int) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_forward_format_is_lossless_for_vllm() -> None:
    """What the gateway sends is read back by vLLM's own audio loader bit-exactly, at 16 kHz, unresampled."""
    from vllm.multimodal.media.audio import AudioMediaIO

    samples = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    loaded, rate = AudioMediaIO(audio_backend="soundfile").load_base64("audio/wav", encode_wav_base64(samples))
    assert rate == TARGET_RATE
    np.testing.assert_array_equal(loaded, samples)


def test_wav_header_is_plain_ieee_float() -> None:
    raw = encode_wav(np.zeros(10, np.float32))
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<HHI", raw, 20) == (3, 1, TARGET_RATE) and len(raw) == 44 + 40


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_16bit_16k_mono_is_forwarded_as_exact_pcm16(fmt: str) -> None:
    """Already-normalised 16-bit input is kept as int16 (half the bytes of float32) and vLLM reads back exactly
    the floats it would have read from the client's own file."""
    from vllm.multimodal.media.audio import AudioMediaIO

    raw = encode(tone(1.0), 16_000, fmt)
    clip = decode_audio(raw, LIMITS, "p")
    assert clip.samples.dtype == np.int16
    forwarded = encode_wav(clip.samples)
    assert struct.unpack_from("<HHIIHH", forwarded, 20) == (1, 1, TARGET_RATE, 2 * TARGET_RATE, 2, 16)
    io = AudioMediaIO(audio_backend="soundfile")
    loaded, rate = io.load_base64("audio/wav", encode_wav_base64(clip.samples))
    direct, _ = io.load_base64(f"audio/{fmt}", base64.b64encode(raw).decode())
    assert rate == TARGET_RATE
    np.testing.assert_array_equal(loaded, direct)


@pytest.mark.parametrize("rate,channels", [(16_000, 2), (22_050, 1)])
def test_16bit_input_needing_conversion_becomes_float32(rate: int, channels: int) -> None:
    clip = decode_audio(encode(tone(1.0, rate, channels), rate, "wav"), LIMITS, "p")
    assert clip.samples.dtype == np.float32


# ----------------------------------------------------------------------------------------------- rejections


def wav(samples: np.ndarray, rate: int = 16_000) -> bytes:
    return encode(samples, rate, "wav")


def bad_inputs() -> list:
    good = wav(tone(1.0))
    nan = tone(1.0)
    nan[100] = np.nan
    flac = encode(tone(1.0), 16_000, "flac")
    return [
        pytest.param(b"", "audio_empty", id="empty"),
        pytest.param(good[:60], "audio_too_short", id="truncated-wav-60-bytes"),  # 8 frames present
        pytest.param(good[:44], "audio_empty", id="wav-header-only"),
        pytest.param(flac[:200], "audio_empty", id="flac-headers-only"),
        pytest.param(b"RIFF\x00\x00\x00\x00garbage" * 10, "invalid_audio", id="corrupt-riff"),
        pytest.param(np.random.default_rng(1).bytes(4000), "invalid_audio", id="random-bytes"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100), "invalid_audio", id="wav-zero-fmt"),
        pytest.param(b"hello, this is text", "invalid_audio", id="text"),
        pytest.param(wav(np.zeros((0, 1), np.float32)), "audio_empty", id="zero-samples"),
        pytest.param(encode_wav_float(nan, 16_000), "audio_not_finite", id="nan"),
        pytest.param(wav(tone(0.05)), "audio_too_short", id="too-short"),
        pytest.param(encode(tone(31.0, 8_000), 8_000, "flac"), "audio_too_long", id="too-long"),
    ]


@pytest.mark.parametrize(("raw", "code"), bad_inputs())
def test_bad_audio_is_a_typed_400(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidAudio) as info:
        decode_audio(raw, LIMITS, "messages[0].content[1].input_audio.data")
    assert info.value.status == 400
    assert info.value.code == code
    assert info.value.param == "messages[0].content[1].input_audio.data"


def test_oversize_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_audio(b"\0" * (LIMITS.max_bytes + 1), LIMITS, "p")
    assert (info.value.status, info.value.code) == (413, "audio_too_large")


@pytest.mark.parametrize(
    ("data", "code"), [("", "audio_empty"), ("not base64!!", "invalid_base64"), ("QUJD=QUJD", "invalid_base64")]
)
def test_bad_base64(data: str, code: str) -> None:
    with pytest.raises(InvalidAudio) as info:
        decode_base64(data, LIMITS, "p")
    assert info.value.code == code


def test_base64_roundtrip() -> None:
    assert decode_base64(base64.b64encode(b"abc").decode(), LIMITS, "p") == b"abc"
