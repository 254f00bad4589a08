"""Routing policies: which of a model's healthy engines takes a request (``ALM_ROUTING`` selects one), one file
each, as the SGLang router's ``policies/``.

The pool (server/routing/pool.py) hands a policy one ``Candidate`` per healthy engine serving the model, each with
its load in requests and in work (tokens, server/work.py), and whether it has a free slot; the policy returns the
index of a free one. Policies are pure functions of that snapshot and the request's ``RequestWork``, so tests
drive them without engines.

- ``least-request`` (least_request.py): fewest requests, ties to the least recently picked.
- ``least-work`` (least_work.py): least work, so a long clip weighs what it costs.
- ``affinity`` (affinity.py): rendezvous hashing of the request's audio key with bounded load; an engine over the
  bound is skipped for the next in rendezvous order; requests without audio: least-request.
- ``affinity-least-work`` (the default; affinity.py): affinity's first choice while it is within the bound, else
  (and for requests without audio) least-work.
"""

from __future__ import annotations

from server.routing.policies.affinity import Affinity, rendezvous_order, within_bound
from server.routing.policies.base import AffinityOutcome, Candidate, Choice, Policy, request_tokens
from server.routing.policies.least_request import LeastRequest
from server.routing.policies.least_work import LeastWork

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Affinity",
    "AffinityOutcome",
    "Candidate",
    "Choice",
    "LeastRequest",
    "LeastWork",
    "Policy",
    "make_policy",
    "rendezvous_order",
    "request_tokens",
    "within_bound",
]

POLICIES = ("least-request", "least-work", "affinity", "affinity-least-work")
DEFAULT_POLICY = "affinity-least-work"


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
