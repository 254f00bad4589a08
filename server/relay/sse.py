"""Server-sent events from engines: regrouping raw chunks into whole events, and the gateway's own error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

from server.errors import GatewayError


def sse_error(err: GatewayError) -> bytes:
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"


class EventTooLarge(Exception):
    """An engine's SSE event (or unterminated tail) exceeds ``max_sse_event_bytes``."""


_BLANK_LINES = (b"\n\n", b"\n\r", b"\r\r")
"""Every blank line (a line terminator followed by another; the terminators are CRLF, LF and CR) holds one of
these pairs, and each pair is a blank line: searching for them (memchr-fast) finds where events end."""
_CR, _LF = 0x0D, 0x0A


async def sse_events(chunks: AsyncIterator[bytes], max_event_bytes: int) -> AsyncIterator[bytes]:
    """Regroup raw chunks into runs of whole SSE events, each event ending in ``\\n\\n`` with LF line ends.

    Linear in the bytes read: each pattern's search resumes where it stopped, and bytes move at most once.
    Memory is bounded: an event, or an unterminated tail, longer than ``max_event_bytes`` raises EventTooLarge.
    A torn tail at the end raises ClientPayloadError."""
    buf = bytearray()
    scan = 0
    async for chunk in chunks:
        if not buf and chunk.endswith(b"\n\n") and len(chunk) <= max_event_bytes and b"\r" not in chunk:
            yield chunk  # the usual case (vLLM: whole LF-framed events per chunk) at the cost of two scans
            continue
        buf += chunk
        found = {pair: buf.find(pair, scan) for pair in _BLANK_LINES}
        start = 0
        while hits := [pos for pos in found.values() if pos >= 0]:
            pos = min(hits)
            body_end = pos - 1 if buf[pos] == _LF and pos > start and buf[pos - 1] == _CR else pos  # a CRLF
            end = pos + 3 if buf[pos + 1 : pos + 3] == b"\r\n" else pos + 2
            if body_end - start > max_event_bytes:
                raise EventTooLarge(f"an SSE event is larger than {max_event_bytes} bytes")
            # Leading line ends are blank lines before the event (dispatch nothing), e.g. an LF after a CR.
            event = bytes(buf[start:body_end]).lstrip(b"\r\n")
            start = end
            for pair, at in found.items():
                if 0 <= at < end:
                    found[pair] = buf.find(pair, end)
            if b"\r" in event:
                event = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if event:
                yield event + b"\n\n"
        if start:
            del buf[:start]
        if len(buf) > max_event_bytes:
            raise EventTooLarge(f"an SSE event is larger than {max_event_bytes} bytes (no end in sight)")
        scan = max(len(buf) - 1, 0)  # a pair may straddle the old end
    if buf.strip():
        raise aiohttp.ClientPayloadError("stream ended inside an SSE event")
