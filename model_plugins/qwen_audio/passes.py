"""Which pieces run together through the audio tower: passes of similar length, each padded to its own longest.

Padding every pass to 30 s (or to its longest piece whatever the others) makes one 30 s piece next to fifteen 1 s
pieces cost 16 x 1500 encoder frames for 2,250 real ones (10.7x). Here pieces are taken longest first and a pass
only takes a piece within 1.25x of its longest, so the padded frames of every pass are at most 1.25x its real
frames (that mix: 1.0x); a pass holds at most FRAMES_PER_FORWARD padded frames (16 pieces of 30 s, the activation
memory vLLM's start-up profile sees). Pure host arithmetic on ints.
"""

FRAMES_PER_FORWARD = 16 * 1500
"""Padded encoder frames per pass (clips x longest T): bounds the activations as 16 clips of 30 s did."""
MAX_PADDING = (5, 4)
"""A pass takes a piece only if longest * 4 <= T * 5: padded / real frames <= 1.25 per piece, hence per pass."""


def plan_passes(frames: list[int], budget: int | None = None) -> list[list[int]]:
    """frames: T (encoder frames) per piece -> passes of piece indices, longest first within and across passes;
    budget: padded frames per pass (FRAMES_PER_FORWARD)."""
    budget = FRAMES_PER_FORWARD if budget is None else budget
    num, den = MAX_PADDING
    passes: list[list[int]] = []
    for i in sorted(range(len(frames)), key=lambda i: -frames[i]):
        if passes:
            current = passes[-1]
            longest = frames[current[0]]
            if longest * den <= frames[i] * num and (len(current) + 1) * longest <= budget:
                current.append(i)
                continue
        passes.append([i])
    return passes


def padding_ratio(frames: list[int], passes: list[list[int]]) -> float:
    """Padded frames (each pass: pieces x its longest) / real frames."""
    padded = sum(len(p) * max(frames[i] for i in p) for p in passes)
    return padded / sum(frames)
