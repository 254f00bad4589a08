"""Host -> device copies of small per-step metadata and constant tables without stalling the device.

The encoders' lengths, window starts and gather offsets are Python ints known on the host
(tensor shapes, never values read back from the device). They travel in one int64 tensor,
through pinned memory on CUDA, with a non-blocking copy: the host does not wait for the
device, unlike `torch.tensor(list, device="cuda")` from pageable memory. Shared by every plugin.
"""

from collections.abc import Sequence

import torch


def host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`: itself on the CPU, else one non-blocking copy (from pinned memory on CUDA)."""
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def to_device(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Equal-length rows of ints -> (rows, n) int64 tensor on `device`."""
    return host_to_device(torch.tensor(rows, dtype=torch.long), device)
