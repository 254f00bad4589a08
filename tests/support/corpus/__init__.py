"""Hostile audio payloads, made by generators (no binary blobs): decompression bombs, containers that make FFmpeg
open files or sockets, and headers that lie. Replayed by test_audio_hostile.py, test_audio_fuzz.py and
test_ingest_memory.py."""

from __future__ import annotations

import struct

import numpy as np


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC's UTF-8-style coding of a frame number."""
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


_FRAME_CACHE: dict[tuple[int, int, int], bytes] = {}


def _flac_frame(number: int, blocksize: int, channels: int) -> bytes:
    """One FLAC frame of CONSTANT subframes (16-bit samples of value 1000): a few bytes per 65535 samples."""
    header = struct.pack(">HBB", 0xFFF8, 0x70, (channels - 1) << 4 | 0b1000) + _utf8_number(number)
    header += struct.pack(">H", blocksize - 1)
    header += bytes([_crc8(header)])
    frame = header + b"".join(b"\x00" + struct.pack(">h", 1000) for _ in range(channels))
    return frame + struct.pack(">H", _crc16(frame))


def flac_constant(
    seconds: float, channels: int, rate: int, *, known_length: bool = True, blocksize: int = 65535
) -> bytes:
    """A valid FLAC of constant frames: the decompression bomb of issue 8 (30 s x 8 ch x 384 kHz is ~6 KB and
    decodes to 92 M samples). ``known_length=False`` leaves STREAMINFO's total at 0 (length unknown)."""
    total = int(seconds * rate)
    info = struct.pack(">HH", 16, blocksize) + b"\0" * 6
    packed = rate << 44 | (channels - 1) << 41 | 15 << 36 | (total if known_length else 0)
    info += packed.to_bytes(8, "big") + b"\0" * 16
    out = [b"fLaC", bytes([0x80]) + len(info).to_bytes(3, "big"), info]
    for number, start in enumerate(range(0, total, blocksize)):
        out.append(_flac_frame(number, min(blocksize, total - start), channels))
    return b"".join(out)


def wav_header(
    *, rate: int = 16_000, channels: int = 1, bits: int = 16, tag: int = 1, data_size: int, riff_size: int | None = None
) -> bytes:
    """A 44-byte RIFF/WAVE header declaring whatever it is told to."""
    align = channels * bits // 8
    riff = 36 + data_size if riff_size is None else riff_size
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff & 0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        tag,
        channels,
        rate,
        (rate * align) & 0xFFFFFFFF,
        align,
        bits,
        b"data",
        data_size & 0xFFFFFFFF,
    )


def float_wav(values: np.ndarray, rate: int = 16_000, bits: int = 32) -> bytes:
    """A mono IEEE-float WAV of exactly these samples (float32 or float64): NaN, inf, 1e29 ..."""
    data = np.asarray(values, dtype="<f4" if bits == 32 else "<f8").tobytes()
    return wav_header(rate=rate, bits=bits, tag=3, data_size=len(data)) + data


def sdp(port: int) -> bytes:
    """An SDP description: FFmpeg's sdp demuxer binds the UDP port and waits for RTP (issue 8: 20 s per request)."""
    return (
        f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def ffconcat(path: str) -> bytes:
    """An ffconcat script: FFmpeg's concat demuxer reads the named local file (issue 8: forwarded as audio)."""
    return f"ffconcat version 1.0\nfile {path}\n".encode()


def hls(url: str) -> bytes:
    """An HLS playlist whose segment is ``url``."""
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{url}\n#EXT-X-ENDLIST\n".encode()


def static_payloads() -> dict[str, bytes]:
    """Hostile payloads that need nothing from the test (no files, no ports), small enough to fuzz."""
    return {
        "flac-bomb-384k-8ch-30s": flac_constant(30.0, 8, 384_000),
        "flac-bomb-192k-8ch-60s": flac_constant(60.0, 8, 192_000),
        "flac-bomb-192k-8ch-60s-unknown-length": flac_constant(60.0, 8, 192_000, known_length=False),
        "flac-bomb-48k-2ch-1200s": flac_constant(1200.0, 2, 48_000),
        "sdp": sdp(9),
        "ffconcat": ffconcat("secret.wav"),
        "hls": hls("http://127.0.0.1:9/x.ts"),
        "wav-9ch": wav_header(channels=9, data_size=18 * 16_000) + b"\0" * (18 * 16_000),
        "wav-384k": wav_header(rate=384_000, data_size=2 * 384_000) + b"\1" * (2 * 384_000),
        "wav-declares-4GB": wav_header(data_size=0xFFFFFFF0) + b"\0\1" * 16_000,
        "wav-header-only": wav_header(data_size=32_000),
        "wav-float-1e29": float_wav(np.full(16_000, 1e29)),
        "wav-float-nan": float_wav(np.full(16_000, np.nan)),
        "wav-double-1e300": float_wav(np.full(16_000, 1e300), bits=64),
        "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "text": b"hello, this is text",
        "id3-only": b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\0" * 16,
    }
