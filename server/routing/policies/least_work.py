"""``least-work``: the free engine holding the least work (prefill tokens not yet done + decode tokens outstanding),
ties by requests, then the least recently picked; so a 60 s clip (300 MiDashengLM tokens and a full encoder pass)
weighs what it costs, not the same as a 2 s one."""

from __future__ import annotations

from collections.abc import Sequence

from server.routing.policies.base import Candidate, Choice, free_indexes
from server.work import RequestWork


class LeastWork:
    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        def key(i: int) -> tuple[float, int, int]:
            return (candidates[i].work, candidates[i].requests, candidates[i].last_pick)

        return Choice(min(free_indexes(candidates), key=key))
