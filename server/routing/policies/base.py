"""What every policy shares: the snapshot it chooses from (``Candidate``), its answer (``Choice``), the ``Policy``
protocol, and a request's cost in tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from server.work import RequestWork

AffinityOutcome = Literal["hit", "miss"]


@dataclass(frozen=True)
class Candidate:
    """One healthy engine serving the request's model, as the pool sees it now."""

    url: str
    """Identifies the engine to rendezvous hashing (stable across restarts of the gateway)."""
    requests: int
    """Requests it holds, every gateway's (server/routing/load.py)."""
    work: float
    """Tokens of work it holds (server/work.py ``EngineWork.tokens``, other gateways' requests included)."""
    last_pick: int = 0
    """When the pool last picked it, in picks (0: never): ties go to the least recently picked."""
    free: bool = True
    """Below its capacity: only free candidates may be chosen."""


@dataclass(frozen=True)
class Choice:
    index: int
    """Into the candidates given."""
    affinity: AffinityOutcome | None = None
    """For a request with an audio key under an affinity policy: ``hit`` when its rendezvous first choice took
    it, ``miss`` when that engine was skipped (over the bound or full)."""


class Policy(Protocol):
    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        """A free candidate for a request of ``work``; at least one candidate is free."""
        ...


def request_tokens(work: RequestWork, default_output_tokens: int = 0) -> float:
    """A request's work in tokens: its prefill plus the decode it may do (every choice)."""
    return work.prefill_tokens + work.decode_tokens(default_output_tokens)


def free_indexes(candidates: Sequence[Candidate]) -> list[int]:
    """Indexes of the candidates below their capacity."""
    return [i for i, c in enumerate(candidates) if c.free]
