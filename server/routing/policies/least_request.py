"""``least-request``: the free engine holding the fewest requests, ties to the least recently picked (round robin
among equals; a count of picks instead would send every tie to a replica that served fewer because it was slower)."""

from __future__ import annotations

from collections.abc import Sequence

from server.routing.policies.base import Candidate, Choice, free_indexes
from server.work import RequestWork


class LeastRequest:
    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        return Choice(min(free_indexes(candidates), key=lambda i: (candidates[i].requests, candidates[i].last_pick)))
