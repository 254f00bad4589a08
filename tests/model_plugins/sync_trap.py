"""A CPU stand-in for `torch.cuda.set_sync_debug_mode("error")` / `VLLM_GPU_SYNC_CHECK=error`: inside
`no_host_sync()`, any operation that would make the host wait for the device raises HostSyncError.

Run the code under test on tensors of a non-CPU device ("meta" on a CPU-only machine: shapes, no data) and every
way a step can stall the host is caught, whatever the device type:
- a value read back on the host: `.tolist()`, `.item()`, `bool(t)`, `int(t)`, `.cpu()`, `.numpy()`
  (torch-function level) and `aten::_local_scalar_dense` or a device -> CPU copy (dispatch level);
- `torch.tensor(data, device=...)` / `torch.as_tensor(..., device=...)`: a blocking copy from pageable memory;
- a CPU -> device copy without `non_blocking=True` (the way `model_plugins/host.py` copies: pinned + non-blocking);
- indexing a device tensor with a Python list or a CPU tensor, or an op mixing a CPU tensor (not a 0-d scalar)
  with device tensors: an implicit blocking copy.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class HostSyncError(AssertionError):
    """The code under test made the host wait for the device."""


_HOST_READS = {
    torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
}  # fmt: skip
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


def _host_index(index: object) -> bool:
    """A Python list or a CPU tensor (not 0-d) in an index: torch copies it to the indexed tensor's device."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(
        isinstance(p, list) or (isinstance(p, torch.Tensor) and p.device.type == "cpu" and p.dim()) for p in parts
    )


def _on_host(device: object) -> bool:
    return device is None or torch.device(device).type == "cpu"  # type: ignore[arg-type]  # str | device | int


class _FunctionTrap(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS and args[0].device.type != "cpu":  # host tensors read on the host are fine
            raise HostSyncError(f"Tensor.{func.__name__} reads a device value on the host")
        if func in _FROM_DATA and not _on_host(kwargs.get("device")):
            raise HostSyncError(f"torch.{func.__name__}(..., device={kwargs['device']}) copies from pageable memory")
        if func in _INDEXING and args[0].device.type != "cpu" and _host_index(args[1]):
            raise HostSyncError(
                f"Tensor.{func.__name__} with a list or CPU index tensor copies it from pageable memory"
            )
        return func(*args, **kwargs)


class _DispatchTrap(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            raise HostSyncError("aten::_local_scalar_dense reads a device value on the host")
        if func.overloadpacket in (aten.to, aten._to_copy, aten.copy_):
            names = [a.name for a in func._schema.arguments]
            bound = {**dict(zip(names[: len(args)], args, strict=True)), **kwargs}  # arguments by name
            source, target = bound["self"].device, bound.get("device") or bound["self"].device
            if "other" in bound:
                target = bound["other"].device
            if "src" in bound:
                source, target = bound["src"].device, bound["self"].device
            _check_copy(source, target, bool(bound.get("non_blocking", False)))
        else:
            tensors = [a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor)]
            if any(t.device.type != "cpu" for t in tensors) and any(
                t.device.type == "cpu" and t.dim() for t in tensors
            ):
                raise HostSyncError(f"{func} mixes a CPU tensor with device tensors (an implicit blocking copy)")
        return func(*args, **kwargs)


def _check_copy(source: torch.device, target: object, non_blocking: bool) -> None:
    if source.type != "cpu" and _on_host(target):
        raise HostSyncError("a device -> CPU copy waits for the device")
    if source.type == "cpu" and not _on_host(target) and not non_blocking:
        raise HostSyncError("a blocking CPU -> device copy (use model_plugins.host: pinned, non-blocking)")


def _flat(args: tuple, kwargs: dict) -> Iterator[object]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, list | tuple):
            yield from value
        else:
            yield value


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise HostSyncError on any host <-> device synchronisation inside the block (see the module doc)."""
    with _FunctionTrap(), _DispatchTrap():
        yield
