"""The Engine record: one vLLM engine as the pool sees it (its models, health, capacity, load and work)."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.routing.load import EngineLoad
from server.work import EngineWork


@dataclass(eq=False)
class Engine:
    url: str
    name: str
    models: frozenset[str] = frozenset()
    max_model_len: dict[str, int] = field(default_factory=dict)
    """Per model, the context length its ``/v1/models`` card reports (vLLM's ``max_model_len``), where it does."""
    healthy: bool = False
    capacity: int = 1
    """Requests it is given at once: its batch plus the queue inside it (``Settings.engine_capacity``)."""
    load: EngineLoad = field(default_factory=EngineLoad)
    failures: int = 0
    last_pick: int = 0
    """The pool's pick count when it last picked this engine (routing ties go to the least recently picked)."""
    server_load: bool | None = None
    """Whether it answers ``/load`` (None: not asked yet)."""
    work: EngineWork = field(default_factory=lambda: EngineWork(0))
    """This gateway's outstanding work on it (tokens, audio seconds)."""
    progress_at: float = float("-inf")
    """``time.monotonic()`` when one of this gateway's requests on it last progressed (``EnginePool.progressed``)."""

    @property
    def outstanding(self) -> int:
        """This gateway's requests holding a slot on it."""
        return self.load.outstanding
