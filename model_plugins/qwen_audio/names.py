"""Published tensor names to ours, by a table of regular expressions (the decoder's and the audio tower's)."""

from __future__ import annotations

import re
from collections.abc import Iterable


class NameTable:
    """Call with a published name: ours from the first pattern that matches it whole, None if none does."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._compiled = tuple((re.compile(published), ours) for published, ours in pairs)

    def __call__(self, published: str) -> str | None:
        for pattern, ours in self._compiled:
            if pattern.fullmatch(published):
                return pattern.sub(ours, published)
        return None
