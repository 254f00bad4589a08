"""The SSE regrouping of engine chunks (server.relay.upstream.sse_events): every terminator the SSE spec allows,
split anywhere, and bounded memory for events that never end."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable

import aiohttp
import pytest

from server.relay.upstream import EventTooLarge, sse_events

# LF, CRLF, CR, and the mixtures a blank line can be made of (CR+CRLF, LF+CRLF, CRLF+LF, LF+CR).
STREAM = (
    b"data: a\n\n"
    b"data: b\r\n\r\n"
    b"data: c\r\r"
    b"event: x\r\ndata: 1\r\ndata: 2\r\n\r\n"
    b"data: d\r\r\n"
    b"data: e\n\r\n"
    b"data: f\r\n\n"
    b"data: g\n\r"
    b": comment\n\n"
    b"\n\n"
    b"data: [DONE]\r\n\r\n"
)
EVENTS = [
    b"data: a\n\n",
    b"data: b\n\n",
    b"data: c\n\n",
    b"event: x\ndata: 1\ndata: 2\n\n",
    b"data: d\n\n",
    b"data: e\n\n",
    b"data: f\n\n",
    b"data: g\n\n",
    b": comment\n\n",
    b"data: [DONE]\n\n",
]


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(parts: Iterable[bytes], cap: int = 1 << 20) -> list[bytes]:
    """The events relayed, one by one: each yield must be a run of whole, LF-framed events."""
    runs = [run async for run in sse_events(_chunks(parts), cap)]
    assert all(run.endswith(b"\n\n") and b"\r" not in run for run in runs)
    return [event.lstrip(b"\n") + b"\n\n" for event in b"".join(runs).split(b"\n\n") if event.lstrip(b"\n")]


async def test_whole_stream_in_one_chunk() -> None:
    assert await collect([STREAM]) == EVENTS


async def test_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(STREAM)):
        assert await collect([STREAM[:cut], STREAM[cut:]]) == EVENTS, cut


async def test_one_byte_at_a_time() -> None:
    assert await collect([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


async def test_random_splits_are_seeded_and_agree() -> None:
    rng = random.Random(8)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 12)))
        parts = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert await collect(parts) == EVENTS


async def test_an_event_is_yielded_as_soon_as_it_ends() -> None:
    """No event waits for later bytes (CRLF-framed streams used to arrive in one piece at the end)."""
    events = sse_events(_chunks([b"data: 1\r\n\r\n", b"data: 2\r\r", b"data: 3\r\n"]), 1024)  # one each
    assert await anext(events) == b"data: 1\n\n"
    assert await anext(events) == b"data: 2\n\n"
    with pytest.raises(aiohttp.ClientPayloadError, match="inside an SSE event"):
        await anext(events)  # the stream ended with "data: 3" unterminated


async def test_an_unterminated_event_is_cut_off_with_bounded_memory() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b"data: ok\n\n"
        while True:
            pulled += 100
            yield b"x" * 100

    events = sse_events(endless(), 1024)
    assert await anext(events) == b"data: ok\n\n"
    with pytest.raises(EventTooLarge, match="1024 bytes"):
        await anext(events)
    assert pulled <= 1024 + 100  # it stopped reading as soon as the limit was passed


async def test_a_terminated_event_over_the_limit_is_refused() -> None:
    with pytest.raises(EventTooLarge):
        await collect([b"data: " + b"y" * 2000 + b"\n\n"], cap=1024)
    assert await collect([b"data: " + b"y" * 1000 + b"\n\n"], cap=1024) == [b"data: " + b"y" * 1000 + b"\n\n"]


async def test_many_events_in_one_chunk_and_a_tail() -> None:
    chunk = b"data: z\n\n" * 10_000 + b"data: t"
    got = [e async for e in sse_events(_chunks([chunk, b"ail\n\n"]), 1024)]
    assert got == [b"data: z\n\n"] * 10_000 + [b"data: tail\n\n"]


async def test_whole_lf_events_pass_in_runs() -> None:
    run = b"data: 1\n\ndata: 2\n\n"
    assert [r async for r in sse_events(_chunks([run, b"data: 3\n\n"]), 1024)] == [run, b"data: 3\n\n"]
    with pytest.raises(EventTooLarge):
        await collect([b"data: " + b"y" * 2000 + b"\n\n"], cap=1024)
