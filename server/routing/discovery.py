"""DNS discovery: every address of every engine host named in ``ALM_ENGINE_URLS`` is an engine of its own.

A compose or Kubernetes service name resolves to one address per replica; ``ALM_ENGINE_DNS_EXPAND`` turns each
into an engine URL, re-resolved every health round. The pool adds what is found and drops what vanished.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("server.routing.pool")  # the pool's logger: its log lines read as before the split


class Discovery:
    def __init__(self, seeds: Sequence[str]) -> None:
        self._seeds = list(seeds)
        self._by_seed: dict[str, set[str]] = {}
        """The engines each seed resolved to last time (kept while its name does not resolve)."""

    async def resolve(self, found: Callable[[str], object]) -> set[str]:
        """The engine URLs every seed's host resolves to now, each passed to ``found`` as it is resolved; a seed
        whose name does not resolve keeps the URLs it had (a DNS hiccup is not a scale-down)."""
        loop = asyncio.get_running_loop()
        seen: set[str] = set()
        for seed in self._seeds:
            parts = urlsplit(seed)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as exc:  # a DNS hiccup is not a scale-down: keep what this seed had
                log.warning("cannot resolve engine host %s: %s", parts.hostname, exc)
                seen |= self._by_seed.get(seed, set())
                continue
            urls: set[str] = set()
            for *_, sockaddr in infos:
                address = str(sockaddr[0])
                host = f"[{address}]" if ":" in address else address
                url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
                urls.add(url)
                found(url)
            self._by_seed[seed] = urls
            seen |= urls
        return seen
