"""Peak bytes of live tensors created inside a block, on CPU (no CUDA allocator stats here).

Every tensor an aten op returns inside the block is tracked by weak reference; after each op
the distinct storages still alive are summed. Weights and inputs created before the block are
not counted; scratch memory that an op frees before returning is not seen either.
"""

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class ActivationPeak(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref[torch.Tensor]] = []
        self.peak_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.refs.extend(weakref.ref(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        live: dict[int, int] = {}
        alive = []
        for ref in self.refs:
            tensor = ref()
            if tensor is not None:
                alive.append(ref)
                storage = tensor.untyped_storage()
                live[storage.data_ptr()] = storage.nbytes()
        self.refs = alive
        self.peak_bytes = max(self.peak_bytes, sum(live.values()))
        return out
