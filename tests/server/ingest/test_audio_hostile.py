"""Hostile audio (issue 8): FFmpeg confined to audio demuxers, decompression bombs, decode time, lying headers,
truncated files served, absurd sample values. Every payload is real bytes, decoded by ``decode_audio``."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import av
import numpy as np
import pytest

from server.config import load_settings
from server.errors import InvalidAudio
from server.ingest.audio import decode as audio_decode
from server.ingest.audio.clip import AudioLimits, Clip, decode_audio
from server.ingest.audio.sniff import DEMUXERS, from_declared, sniff
from tests.support.audio_synth import encode, tone
from tests.support.corpus import ffconcat, flac_constant, float_wav, hls, sdp, static_payloads, wav_header

LIMITS = AudioLimits(max_bytes=2_000_000, max_seconds=30.0, min_seconds=0.2)
PARAM = "messages[0].content[0].input_audio.data"


def rejected(raw: bytes, limits: AudioLimits = LIMITS, fmt: str | None = None) -> InvalidAudio:
    with pytest.raises(InvalidAudio) as info:
        decode_audio(raw, limits, PARAM, fmt)
    assert info.value.status == 400 and info.value.param == PARAM
    return info.value


def peak_traced(fn: Callable[[], object]) -> tuple[object, int]:
    """(result or raised error, peak bytes of Python/numpy allocations while it ran)."""
    tracemalloc.start()
    try:
        try:
            result: object = fn()
        except InvalidAudio as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------ FFmpeg demuxers


def udp_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


@contextmanager
def watch_udp(port: int) -> Iterator[list[int]]:
    """Polls the host's UDP sockets while the block runs; yields a list that gets ``port`` if it was bound."""
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() and not seen:
            if port in udp_ports():
                seen.append(port)
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        time.sleep(0.01)
        yield seen
        time.sleep(0.01)
    finally:
        stop.set()
        thread.join()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sdp_opens_no_socket() -> None:
    port = free_udp_port()
    # control: FFmpeg left to probe binds the client's port and waits for RTP
    with (
        watch_udp(port) as seen,
        pytest.raises(av.error.FFmpegError),
        av.open(io.BytesIO(sdp(port)), timeout=(0.3, 0.3)) as container,
    ):
        next(container.decode(audio=0))
    assert seen == [port]
    port = free_udp_port()
    for fmt in (None, "wav", "mp3"):
        with watch_udp(port) as seen:
            assert rejected(sdp(port), fmt=fmt).code in ("invalid_audio", "unsupported_audio_format")
        assert seen == []


@pytest.mark.parametrize("relative", [True, False])
def test_ffconcat_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(encode(tone(1.0), 16_000, "wav"))
    monkeypatch.chdir(tmp_path)
    payload = ffconcat("secret.wav" if relative else str(secret))
    if relative:  # control: FFmpeg left to probe reads the local file as audio (issue 8)
        with av.open(io.BytesIO(payload)) as container:
            assert sum(f.samples for f in container.decode(audio=0)) == 16_000
    for fmt in (None, "wav", "flac"):  # a demuxer forced onto text may find a nonsense stream, or none
        assert rejected(payload, fmt=fmt).code in ("invalid_audio", "unsupported_audio_format")


def test_hls_fetches_nothing() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.2)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/segment.ts"
        for fmt in (None, "aac", "mp3", "m4a"):
            assert rejected(hls(url), fmt=fmt).code in ("invalid_audio", "unsupported_audio_format")
        with pytest.raises(TimeoutError):
            listener.accept()


def test_ffmpeg_is_only_given_allowed_demuxers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every FFmpeg open names an allowed demuxer (or probes with the allow-list enforced) and no protocol."""
    calls: list[dict] = []
    real_open = av.open

    def spy(file: object, *args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_open(file, *args, **kwargs)

    payloads = [
        *static_payloads().values(),
        encode(tone(1.0, 48_000), 48_000, "webm"),
        encode(tone(1.0, 44_100), 44_100, "m4a"),
        b"\0" * 64 + encode(tone(1.0), 16_000, "mp3"),
    ]
    monkeypatch.setattr(audio_decode.av, "open", spy)
    for raw in payloads:
        for fmt in (None, "mp3", "webm"):
            with suppress(InvalidAudio):
                decode_audio(raw, LIMITS, PARAM, fmt)
    assert len(calls) > 20
    for kwargs in calls:
        assert kwargs["format"] is None or kwargs["format"] in DEMUXERS
        options = kwargs["container_options"]
        assert isinstance(options, dict)
        assert set(options["format_whitelist"].split(",")) == DEMUXERS
        assert options["protocol_whitelist"] == "none"


@pytest.mark.parametrize(
    "name",
    [
        "concat",
        "ffconcat",
        "hls",
        "m3u8",
        "sdp",
        "rtp",
        "image2",
        "png",
        "tty",
        "http",
        "file",
        "lavfi",
        "data",
        "",
        None,
    ],
)
def test_declared_format_cannot_pick_another_demuxer(name: str | None) -> None:
    assert from_declared(name) is None


@pytest.mark.parametrize(
    ("declared", "demuxer"),
    [
        ("WAV", "wav"),
        ("audio/x-wav", "wav"),
        ("clip.m4a", "mov"),
        ("webm", "matroska"),
        ("opus", "ogg"),
        ("audio/mpeg", "mp3"),
    ],
)
def test_declared_formats(declared: str, demuxer: str) -> None:
    assert from_declared(declared) == demuxer


def test_declared_format_decodes_a_clip_without_magic() -> None:
    """MP3 behind junk has no magic at offset 0: the declared format names the demuxer."""
    raw = b"\0" * 700 + encode(tone(1.0, 22_050), 22_050, "mp3")
    assert sniff(raw) is None
    assert abs(decode_audio(raw, LIMITS, PARAM, "mp3").seconds - 1.0) < 0.1


def test_the_bytes_win_over_a_wrong_declared_format() -> None:
    clip = decode_audio(encode(tone(1.0), 16_000, "wav"), LIMITS, PARAM, "mp3")
    assert clip.samples.dtype == np.int16 and len(clip.samples) == 16_000


# ----------------------------------------------------------------------------------------- decompression bombs


def test_issue_bombs_are_refused_from_the_header() -> None:
    """30 s and 600 s x 8 ch x 384 kHz of constant FLAC frames (6 KB, 124 KB): the rate cap; with the cap raised,
    the samples x channels budget, read from STREAMINFO before any decoding."""
    for seconds in (30.0, 600.0):
        raw = flac_constant(seconds, 8, 384_000)
        assert rejected(raw).code == "unsupported_audio_format"
        limits = _limits(max_source_rate=384_000, max_seconds=600.0)
        error, peak = peak_traced(lambda raw=raw, limits=limits: decode_audio(raw, limits, PARAM))
        assert isinstance(error, InvalidAudio) and error.code == "audio_too_many_samples"
        assert peak < 1 << 20


def _limits(**overrides: object) -> AudioLimits:
    fields = {"max_bytes": 2_000_000, "max_seconds": 30.0, "min_seconds": 0.2, **overrides}
    return AudioLimits(**fields)  # type: ignore[arg-type]


def test_bomb_of_unknown_length_stops_at_the_budget() -> None:
    raw = flac_constant(60.0, 8, 192_000, known_length=False)
    error, peak = peak_traced(lambda: decode_audio(raw, _limits(max_seconds=600.0), PARAM))
    assert isinstance(error, InvalidAudio) and error.code == "audio_too_many_samples"
    assert peak < 24 << 20


def test_peak_memory_does_not_grow_with_channels_or_rate() -> None:
    """The same 60 s decoded in full from 1 ch x 24 kHz and 8 ch x 192 kHz: peak memory is the 16 kHz mono
    result and one block, not the source (8 x 192 kHz x 60 s as float32 would be 352 MiB)."""
    limits = _limits(max_seconds=120.0, max_source_samples=1 << 40)
    peaks = []
    for channels, rate in ((1, 24_000), (8, 192_000)):
        raw = flac_constant(60.0, channels, rate, known_length=False)
        clip, peak = peak_traced(lambda raw=raw: decode_audio(raw, limits, PARAM))
        assert isinstance(clip, Clip) and abs(clip.seconds - 60.0) < 0.1 and clip.source_channels == channels
        peaks.append(peak)
    result = 60 * 16_000 * 4
    assert peaks[1] < 2 * result + (12 << 20) and peaks[1] < peaks[0] + (8 << 20), peaks


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"channels": 9}, "unsupported_audio_format"),
        ({"rate": 384_000}, "unsupported_audio_format"),
        ({"rate": 500}, "unsupported_audio_format"),
    ],
)
def test_stream_caps(header: dict, code: str) -> None:
    raw = wav_header(data_size=64_000, **header) + b"\1" * 64_000
    assert rejected(raw).code == code


def test_caps_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALM_MAX_AUDIO_CHANNELS", "2")
    monkeypatch.setenv("ALM_MAX_AUDIO_SOURCE_RATE", "48000")
    monkeypatch.setenv("ALM_MAX_AUDIO_SOURCE_SAMPLES", "100000")
    monkeypatch.setenv("ALM_AUDIO_DECODE_TIMEOUT_S", "3")
    limits = AudioLimits.of(load_settings())
    assert (limits.max_channels, limits.max_source_rate, limits.source_sample_budget, limits.decode_timeout_s) == (
        2,
        48_000,
        100_000,
        3.0,
    )
    assert rejected(encode(tone(4.0, 16_000, 2), 16_000, "wav"), limits).code == "audio_too_many_samples"
    monkeypatch.delenv("ALM_MAX_AUDIO_SOURCE_SAMPLES")
    assert AudioLimits.of(load_settings(max_audio_seconds=10)).source_sample_budget == 11 * 96_000


@pytest.mark.parametrize("fmt,rate", [("wav", 16_000), ("flac", 44_100), ("webm", 48_000), ("m4a", 44_100)])
def test_decode_time_limit(fmt: str, rate: int) -> None:
    raw = encode(tone(5.0, rate, 2), rate, fmt)
    assert rejected(raw, _limits(decode_timeout_s=1e-9)).code == "audio_decode_timeout"
    assert abs(decode_audio(raw, LIMITS, PARAM).seconds - 5.0) < 0.1


# ------------------------------------------------------------------------------------ truncated and streamed files


def test_truncated_wav_is_served_with_the_audio_present() -> None:
    raw = encode(tone(2.0), 16_000, "wav")
    cut = raw[: 44 + 2 * 12_345 + 1]  # the header declares 2 s; 12,345 frames and half a frame are present
    clip = decode_audio(cut, LIMITS, PARAM)
    assert clip.samples.dtype == np.int16
    np.testing.assert_array_equal(clip.samples, np.frombuffer(raw[44 : 44 + 2 * 12_345], "<i2"))


def test_truncated_wav_shorter_than_the_minimum_is_400() -> None:
    raw = encode(tone(2.0), 16_000, "wav")
    assert rejected(raw[: 44 + 2 * 1_600]).code == "audio_too_short"  # 0.1 s present


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
@pytest.mark.parametrize("riff_size", [0, 0xFFFFFFFF, None])
def test_streamed_wav_sizes(size: int, riff_size: int | None) -> None:
    samples = encode(tone(1.0), 16_000, "wav")[44:]
    clip = decode_audio(wav_header(data_size=size, riff_size=riff_size) + samples, LIMITS, PARAM)
    np.testing.assert_array_equal(clip.samples, np.frombuffer(samples, "<i2"))


@pytest.mark.parametrize(("fmt", "rate"), [("flac", 16_000), ("mp3", 44_100), ("ogg", 22_050), ("webm", 48_000)])
def test_truncated_compressed_files_are_served(fmt: str, rate: int) -> None:
    raw = encode(tone(8.0, rate, 2), rate, fmt)
    clip = decode_audio(raw[: len(raw) * 3 // 4], LIMITS, PARAM)
    assert 3.0 < clip.seconds < 7.9


def _pipe_flac(samples: np.ndarray) -> bytes:
    """FLAC written to a non-seekable output, as `ffmpeg ... -f flac pipe:` does: STREAMINFO's total is 0."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b: bytes) -> int:  # type: ignore[override]  # RawIOBase's buffer type
            self.data += b
            return len(b)

    pipe = Pipe()
    with av.open(pipe, mode="w", format="flac", buffer_size=4096) as out:
        stream = out.add_stream("flac", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples.T * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):  # muxed before the flush: the header goes out without the total
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return bytes(pipe.data)


def test_flac_of_unknown_length_is_served() -> None:
    """Issue 8: rejected as "576460752303423 s long" (libsndfile's unknown length taken for the length)."""
    raw = _pipe_flac(tone(3.0))
    assert struct.unpack(">Q", raw[8 + 10 : 8 + 18])[0] & (1 << 36) - 1 == 0
    assert abs(decode_audio(raw, LIMITS, PARAM).seconds - 3.0) < 0.01
    hand_made = decode_audio(flac_constant(2.0, 2, 16_000, known_length=False), LIMITS, PARAM)
    assert len(hand_made.samples) == 32_000


# ----------------------------------------------------------------------------------------------- sample values


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (1e29, "audio_out_of_range"),
        (-1e29, "audio_out_of_range"),
        (2e4, "audio_out_of_range"),
        (np.nan, "audio_not_finite"),
        (np.inf, "audio_not_finite"),
        (-np.inf, "audio_not_finite"),
    ],
)
@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_absurd_samples_are_400(value: float, code: str, rate: int) -> None:
    samples = tone(1.0, rate)[:, 0].astype(np.float64)
    samples[rate // 2] = value
    assert rejected(float_wav(samples, rate)).code == code


def test_double_beyond_float32_is_400() -> None:
    assert rejected(float_wav(np.full(16_000, 1e300), bits=64)).code == "audio_not_finite"


def test_huge_sample_in_one_channel_is_400() -> None:
    stereo = tone(1.0, 16_000, 2)
    stereo[8_000, 1] = 1e29
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, stereo, 16_000, format="WAV", subtype="FLOAT")
    assert rejected(buf.getvalue()).code == "audio_out_of_range"


def test_headroom_above_full_scale_is_forwarded_unchanged() -> None:
    samples = np.full(16_000, 2.5, np.float32)
    samples[::2] = -9_999.0
    clip = decode_audio(float_wav(samples), LIMITS, PARAM)
    np.testing.assert_array_equal(clip.samples, samples)
