"""``affinity`` and ``affinity-least-work``: rendezvous (highest-random-weight) hashing of the request's audio key
with bounded load, so later turns about the same clip reach the replica whose prefix cache holds it.

An engine whose work is above (1 + ε) × the average (bounded load) is skipped: under ``affinity`` for the next in
rendezvous order, under ``affinity-least-work`` for the fallback's choice (least work). Requests without audio go
to the fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from server.routing.policies.base import Candidate, Choice, Policy, request_tokens
from server.work import RequestWork


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
