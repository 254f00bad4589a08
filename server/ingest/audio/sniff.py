"""Which container a clip is in, decided by us from its first bytes: FFmpeg never guesses from client bytes.

FFmpeg's own probing picks among all ~400 demuxers, some of which open other files or sockets (concat, HLS,
SDP/RTP, image2, ...). Only the audio container demuxers in ``DEMUXERS`` may read client bytes: the container is
sniffed from magic bytes here, else taken from the client's declared format, and FFmpeg is told which one to use.
"""

from __future__ import annotations

DEMUXERS = frozenset({"wav", "flac", "mp3", "ogg", "matroska", "mov", "aac", "aiff"})
"""FFmpeg demuxer names allowed on client bytes (``matroska`` includes WebM; ``mov`` includes MP4/M4A)."""

SOUNDFILE_CONTAINERS = frozenset({"wav", "flac", "ogg", "aiff", "mp3"})
"""Containers libsndfile reads (tried first: faster, and exact for 16-bit PCM); FFmpeg is the fallback."""

DECLARED = {
    "wav": "wav",
    "wave": "wav",
    "mp3": "mp3",
    "mpeg": "mp3",
    "flac": "flac",
    "ogg": "ogg",
    "oga": "ogg",
    "opus": "ogg",
    "webm": "matroska",
    "mkv": "matroska",
    "m4a": "mov",
    "mp4": "mov",
    "aac": "aac",
    "aiff": "aiff",
    "aif": "aiff",
}
"""Declared format (``input_audio.format``, a data-URL subtype, an upload's file extension) → demuxer."""

_ID3_HEADER = 10


def sniff(raw: bytes) -> str | None:
    """The demuxer for ``raw`` from its magic bytes, or None when no allowed container starts it."""
    if raw[:3] == b"ID3" and len(raw) >= _ID3_HEADER:  # ID3v2 tag (MP3, sometimes FLAC or ADTS AAC) first
        size = _syncsafe(raw[6:10]) + _ID3_HEADER + (_ID3_HEADER if raw[5] & 0x10 else 0)
        return _sniff_bare(raw[size : size + 16]) or "mp3"
    return _sniff_bare(raw[:16])


def from_declared(fmt: str | None) -> str | None:
    """The demuxer for a declared format, e.g. ``"audio/x-wav"``, ``"WAV"`` or ``"clip.m4a"``; None if unknown."""
    if not fmt:
        return None
    name = fmt.strip().lower().rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return DECLARED.get(name.removeprefix("x-"))


def _sniff_bare(head: bytes) -> str | None:
    if head[8:12] == b"WAVE" and head[:4] in (b"RIFF", b"RF64", b"BW64"):
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mov"
    magic = {b"fLaC": "flac", b"OggS": "ogg", b"\x1aE\xdf\xa3": "matroska", b"ADIF": "aac"}
    if head[:4] in magic:
        return magic[head[:4]]
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        layer = (head[1] >> 1) & 3
        if layer == 0:  # "layer 0" is ADTS (AAC) when the MPEG-version bits say so
            return "aac" if head[1] & 0xF6 == 0xF0 else None
        return "mp3" if (head[1] >> 3) & 3 != 1 and len(head) >= 3 and head[2] >> 4 != 0xF else None
    return None


def _syncsafe(b: bytes) -> int:
    return (b[0] & 0x7F) << 21 | (b[1] & 0x7F) << 14 | (b[2] & 0x7F) << 7 | (b[3] & 0x7F)
