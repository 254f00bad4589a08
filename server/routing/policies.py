"""Routing policies: which of a model's healthy engines takes a request (``ALM_ROUTING`` selects one).

The pool (server/routing/pool.py) hands a policy one ``Candidate`` per healthy engine serving the model, each with its
load in requests and in work (tokens, server/work.py), and whether it has a free slot; the policy returns the
index of a free one. Policies are pure functions of that snapshot and the request's ``RequestWork``, so tests
drive them without engines.

- ``least-request``: fewest requests, ties to the least recently picked (round robin among equals; a count of
  picks instead would send every tie to a replica that served fewer because it was slower).
- ``least-work``: least work (prefill tokens not yet done + decode tokens outstanding), so a 60 s clip (300
  MiDashengLM tokens and a full encoder pass) weighs what it costs, not the same as a 2 s one.
- ``affinity``: the engine that rendezvous (highest-random-weight) hashing of the request's audio key ranks
  first, so later turns about the same clip reach the replica whose prefix cache holds it; an engine whose work
  is above (1 + ε) × the average (bounded load) is skipped for the next in rendezvous order.
- ``affinity-least-work`` (the default): affinity's first choice while it is within the bound, else (and for
  requests without audio) least-work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from server.work import RequestWork

POLICIES = ("least-request", "least-work", "affinity", "affinity-least-work")
DEFAULT_POLICY = "affinity-least-work"

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


def rendezvous_order(key: bytes, urls: Sequence[str]) -> list[int]:
    """Indexes of ``urls`` by descending weight for ``key``: each engine's weight depends only on the key and
    its own URL, so adding or removing an engine moves only the keys it wins or held (~1/N of them)."""
    weights = [hashlib.blake2b(url.encode(), digest_size=8, key=key[:64]).digest() for url in urls]
    return sorted(range(len(urls)), key=lambda i: weights[i], reverse=True)


def within_bound(candidates: Sequence[Candidate], index: int, cost: float, epsilon: float) -> bool:
    """Whether candidate ``index`` is free and its work is at most (1 + ε) × the average work of the candidates
    once this request is added (consistent hashing with bounded loads; with the request counted in the
    average, an idle pool never skips)."""
    total = sum(c.work for c in candidates) + cost
    return candidates[index].free and candidates[index].work <= (1 + epsilon) * total / len(candidates)


def request_tokens(work: RequestWork, default_output_tokens: int = 0) -> float:
    """A request's work in tokens: its prefill plus the decode it may do (every choice)."""
    return work.prefill_tokens + work.decode_tokens(default_output_tokens)


def _least(candidates: Sequence[Candidate], key: str) -> int:
    free = [i for i, c in enumerate(candidates) if c.free]
    if key == "work":
        return min(free, key=lambda i: (candidates[i].work, candidates[i].requests, candidates[i].last_pick))
    return min(free, key=lambda i: (candidates[i].requests, candidates[i].last_pick))


class LeastRequest:
    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        return Choice(_least(candidates, "requests"))


class LeastWork:
    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        return Choice(_least(candidates, "work"))


@dataclass(frozen=True)
class Affinity:
    """Rendezvous hashing with bounded load; ``fallback``: where a request goes without an audio key, and
    (``spill_to_fallback``) where it goes when its first choice is skipped instead of the next in order."""

    epsilon: float
    fallback: Policy
    spill_to_fallback: bool
    default_output_tokens: int = 0

    def choose(self, candidates: Sequence[Candidate], work: RequestWork) -> Choice:
        if work.affinity_key is None:
            return self.fallback.choose(candidates, work)
        order = rendezvous_order(work.affinity_key, [c.url for c in candidates])
        cost = request_tokens(work, self.default_output_tokens)
        if within_bound(candidates, order[0], cost, self.epsilon):
            return Choice(order[0], "hit")
        if not self.spill_to_fallback:
            for index in order[1:]:
                if within_bound(candidates, index, cost, self.epsilon):
                    return Choice(index, "miss")
        return Choice(self.fallback.choose(candidates, work).index, "miss")


def make_policy(name: str, epsilon: float, default_output_tokens: int) -> Policy:
    """The policy ``ALM_ROUTING`` names (server/config.py has checked it is one of ``POLICIES``)."""
    if name == "least-request":
        return LeastRequest()
    if name == "least-work":
        return LeastWork()
    if name == "affinity":
        return Affinity(epsilon, LeastRequest(), False, default_output_tokens)
    if name == "affinity-least-work":
        return Affinity(epsilon, LeastWork(), True, default_output_tokens)
    raise ValueError(f"unknown routing policy {name!r}; one of {', '.join(POLICIES)}")
