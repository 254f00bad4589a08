"""Which engine takes a request, and whether the gateway takes it at all: the engine pool (``EnginePool``) keeps
the engines (``Engine``) found by URL or DNS, checks their health and reads their own load reports, hands out a
slot on the engine that the routing policy (``make_policy``, ``ALM_ROUTING``, one file each in ``policies/``)
chooses by load, work and audio affinity, and queues a request, or refuses it with a 429, while every engine is
at capacity; ``backlog.py`` admits requests by the seconds of audio queued before they reach the pool.
"""

from server.routing.engine import Engine
from server.routing.policies import make_policy
from server.routing.pool import EnginePool

__all__ = ["Engine", "EnginePool", "make_policy"]
