"""torch.cuda's memory-stat functions answered from memfit's stats.

Under a pluggable allocator PyTorch's own memory_stats / memory_allocated / ...
raise; memfit replaces the few functions they all go through with versions
that read memfit's counters, in PyTorch's key names, so existing training code
and loggers keep working."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ._lib import check, lib
from .allocator import Allocator

_saved: Dict[str, Callable[..., Any]] = {}
_baseline: Dict[int, Dict[str, int]] = {}  # totals at the last reset_accumulated_memory_stats
_routed: Optional[Allocator] = None

# PyTorch's stat name -> memfit's counter
_BYTE_STATS = {
    "allocated_bytes": "allocated_bytes",
    "reserved_bytes": "reserved_bytes",
    "active_bytes": "allocated_bytes",
    "requested_bytes": "requested_bytes",
}
_COUNT_STATS = {"allocation": "active_blocks", "active": "active_blocks", "segment": "segments"}


def _device_index(device: Any) -> int:
    import torch

    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        return device.index if device.index is not None else _device_index(None)
    raise TypeError(f"memfit: cannot read a device index from {device!r}")


def nested_stats(alloc: Allocator, device: Any = None) -> Dict[str, Any]:
    """memfit's stats of a device in the shape of torch.cuda.memory_stats_as_nested_dict()."""
    index = _device_index(device)
    raw = alloc.stats(index)
    base = _baseline.get(index, {})
    out: Dict[str, Any] = {}
    for torch_name, mf_name in {**_BYTE_STATS, **_COUNT_STATS}.items():
        c = raw[mf_name]
        total = c["total"] - base.get(mf_name, 0)  # type: ignore[index]
        current = c["current"]  # type: ignore[index]
        freed = max(total - current, 0)
        out[torch_name] = {"all": {"current": current, "peak": c["peak"], "allocated": total, "freed": freed}}  # type: ignore[index]
    out["num_ooms"] = raw["ooms"]
    out["num_alloc_retries"] = raw["ladder_releases"]
    out["num_device_alloc"] = raw["segment_maps"]
    out["num_device_free"] = raw["segment_unmaps"]
    out["num_sync_all_streams"] = 0
    return out


def route_cuda_stats(alloc: Allocator) -> None:
    """Make torch.cuda's memory-stat functions read `alloc` (idempotent)."""
    global _routed
    import torch.cuda
    import torch.cuda.memory as mem

    def memory_stats_as_nested_dict(device: Any = None) -> Dict[str, Any]:
        return nested_stats(alloc, device)

    def reset_peak_memory_stats(device: Any = None) -> None:
        check(lib().mf_reset_peaks(alloc.handle, _device_index(device)), "resetting peaks")

    def reset_accumulated_memory_stats(device: Any = None) -> None:
        index = _device_index(device)
        raw = alloc.stats(index)
        _baseline[index] = {name: raw[name]["total"] for name in set(_BYTE_STATS.values()) | set(_COUNT_STATS.values())}  # type: ignore[index]

    def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
        return alloc.memory_report(_device_index(device))

    replacements = {
        "memory_stats_as_nested_dict": memory_stats_as_nested_dict,
        "reset_peak_memory_stats": reset_peak_memory_stats,
        "reset_accumulated_memory_stats": reset_accumulated_memory_stats,
        "memory_summary": memory_summary,
    }
    for name, fn in replacements.items():
        if name not in _saved:
            _saved[name] = getattr(mem, name)
        setattr(mem, name, fn)  # memory_stats, memory_allocated, ... look these up in mem at each call
        if hasattr(torch.cuda, name):
            setattr(torch.cuda, name, fn)
    _routed = alloc


def unroute_cuda_stats() -> None:
    """Put PyTorch's own functions back (tests)."""
    global _routed
    import torch.cuda
    import torch.cuda.memory as mem

    for name, fn in _saved.items():
        setattr(mem, name, fn)
        if hasattr(torch.cuda, name):
            setattr(torch.cuda, name, fn)
    _saved.clear()
    _baseline.clear()
    _routed = None
