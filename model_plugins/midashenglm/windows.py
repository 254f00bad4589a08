"""How one step's clips become encoder windows, and which windows run together (host side only).

A clip of P time patches is cut into windows of `per_window` patches (252 = 1008 frames, ~10 s);
only its last window may be partial. Windows run in chunks of at most `max_windows`:
- full windows first, in clip order: every key is real, so attention needs no mask (SDPA can
  pick its fused kernels) and no padding is wasted;
- then the partial windows, longest first, each chunk zero-padded only to its own longest window
  (a new chunk starts rather than pad a window to more than twice its length) and masked only
  if its windows differ in length.
Everything here is plain Python on host ints (clip lengths come from tensor shapes), so planning
a step never waits for the device.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """Windows [start, stop) of the processing order, run as one (stop - start, width) batch."""

    start: int
    stop: int
    width: int  # patches per window in this chunk (the longest window of the chunk)
    masked: bool  # some window of the chunk is shorter than `width`


@dataclass
class WindowPlan:
    """Windows in processing order (full ones first) and where their outputs land.

    clip, index, valid: per window in processing order — its clip, its position in that clip,
        and its real patches.
    chunks: contiguous runs of the processing order.
    row_base: per window in processing order, the first row of its output once every chunk's
        (windows x width) output is flattened and concatenated.
    """

    per_window: int
    clip: list[int]
    index: list[int]
    valid: list[int]
    chunks: list[Chunk]
    row_base: list[int]

    @property
    def num_windows(self) -> int:
        return len(self.clip)

    def keep_layout(self, keep: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Gather layout for the first keep[i] patches of each clip, clip after clip.

        Returns (row_base, kept, kept_before) per window in CLIP order: the window's first
        output row, how many of its rows are kept, and how many rows precede them in the result.
        """
        by_clip = sorted(range(self.num_windows), key=lambda w: (self.clip[w], self.index[w]))
        bases, kept, before, total = [], [], [], 0
        for w in by_clip:
            take = min(self.valid[w], max(0, keep[self.clip[w]] - self.index[w] * self.per_window))
            bases.append(self.row_base[w])
            kept.append(take)
            before.append(total)
            total += take
        return bases, kept, before


def plan_windows(patches_per_clip: list[int], per_window: int, max_windows: int) -> WindowPlan:
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    full: list[tuple[int, int, int]] = []
    partial: list[tuple[int, int, int]] = []
    for clip, patches in enumerate(patches_per_clip):
        if patches < 1:
            raise ValueError(f"clip {clip} is too short for one encoder patch")
        for index, start in enumerate(range(0, patches, per_window)):
            valid = min(per_window, patches - start)
            (full if valid == per_window else partial).append((clip, index, valid))
    partial.sort(key=lambda window: -window[2])  # stable: equal lengths keep clip order
    order = full + partial
    chunks: list[Chunk] = []
    row_base: list[int] = []
    row = 0
    start = 0
    while start < len(order):
        width = order[start][2]  # the chunk's longest window (full ones come first)
        stop = start + 1
        while (
            stop < len(order)
            and stop - start < max_windows
            and (order[stop][2] == per_window) == (width == per_window)  # full and partial apart
            and 2 * order[stop][2] > width
        ):
            stop += 1
        chunks.append(Chunk(start, stop, width, masked=order[stop - 1][2] < width))
        row_base.extend(row + i * width for i in range(stop - start))
        row += (stop - start) * width
        start = stop
    return WindowPlan(
        per_window=per_window,
        clip=[w[0] for w in order],
        index=[w[1] for w in order],
        valid=[w[2] for w in order],
        chunks=chunks,
        row_base=row_base,
    )
