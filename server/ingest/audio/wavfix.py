"""WAV headers as written by streaming recorders, made readable by libsndfile.

A WAV written to a pipe or a socket cannot go back and fill in its sizes: it declares a ``data`` chunk of 0 or
0xFFFFFFFF bytes. libsndfile already reads 0xFFFFFFFF (and a header that declares more than the file holds) as
"to the end of the file", but reads a declared 0 as no audio at all; FFmpeg and browsers play the bytes present.
"""

from __future__ import annotations

import struct

_MAX_CHUNKS = 64  # real files have a handful before ``data``; a hostile one must not cost a long Python loop


def repair(raw: bytes) -> bytes:
    """``raw`` with a ``data`` chunk declared as 0 bytes resized to the whole bytes present (whole frames);
    anything else unchanged."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return raw
    pos, block_align = 12, 1
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > len(raw):
            return raw
        cid, size = raw[pos : pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        if cid == b"fmt " and size >= 16 and pos + 22 <= len(raw):
            block_align = max(1, struct.unpack_from("<H", raw, pos + 20)[0])
        if cid == b"data":
            present = len(raw) - pos - 8
            if size != 0 or present < block_align:
                return raw
            fixed = present - present % block_align
            return raw[: pos + 4] + struct.pack("<I", fixed) + raw[pos + 8 :]
        pos += 8 + size + (size & 1)
    return raw
