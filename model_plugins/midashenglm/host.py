"""Host -> device copies of small per-step metadata without stalling the device.

The encoder's lengths, window starts and gather offsets are Python ints known on the host
(tensor shapes, never values read back from the device). They travel in one int64 tensor,
through pinned memory on CUDA, with a non-blocking copy: the host does not wait for the
device, unlike `torch.tensor(list, device="cuda")` from pageable memory.
"""

from collections.abc import Sequence

import torch


def to_device(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Equal-length rows of ints -> (rows, n) int64 tensor on `device`."""
    host = torch.tensor(rows, dtype=torch.long)
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
