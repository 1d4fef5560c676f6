"""PyTorch's memory functions answered from memfit while memfit is PyTorch's CUDA allocator.

Under a pluggable allocator PyTorch's memory_stats, reset_peak_memory_stats,
reset_accumulated_memory_stats, get_per_process_memory_fraction and
torch.accelerator's memory functions raise ("CUDAPluggableAllocator does not yet
support ..."), and mem_get_info / torch.accelerator.get_memory_info ask the driver,
which knows nothing of memfit's capacity or cache. route_cuda_stats() replaces the
few functions the others go through with versions that read memfit, in PyTorch's
key names, so training code, loggers and frameworks that size from free memory
keep working."""

from __future__ import annotations

import collections
import ctypes
import importlib
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from ._lib import MemfitError, check, lib
from .allocator import Allocator

# (namespace, name) -> PyTorch's own function, saved at the first route
_saved: Dict[Tuple[Any, str], Callable[..., Any]] = {}
# device -> {memfit counter or event: (total, current)} at the last reset_accumulated_memory_stats
_baseline: Dict[int, Dict[str, Tuple[int, int]]] = {}
_routed: Optional[Allocator] = None
_driver: Optional[Callable[[Any], Tuple[int, int]]] = None

# PyTorch's stat name -> memfit's counter. memfit's live blocks are PyTorch's
# allocations and active blocks alike: a block waiting on record_stream events is
# neither allocated nor active in memfit's counters.
_BYTE_STATS = {
    "allocated_bytes": "allocated_bytes",
    "reserved_bytes": "reserved_bytes",
    "active_bytes": "allocated_bytes",
    "requested_bytes": "requested_bytes",
}
_COUNT_STATS = {"allocation": "active_blocks", "active": "active_blocks", "segment": "segments"}
# PyTorch's event counter -> memfit's events summed (reset by reset_accumulated_memory_stats)
_EVENT_STATS = {
    "num_alloc_retries": ("ladder_releases",),  # the OOM ladder released cached memory (or waited) and retried
    "num_ooms": ("ooms",),
    "num_device_alloc": ("segment_maps", "granule_maps"),  # cuMemAlloc + cuMemMap calls
    "num_device_free": ("segment_unmaps", "granule_unmaps"),  # cuMemFree + cuMemUnmap calls
    "num_sync_all_streams": ("syncs",),  # device synchronizations before memory is unmapped
}
# Stats memfit's C core does not count. They read 0, as PyTorch's own
# backend:cudaMallocAsync reports the stats it cannot compute: memfit keeps
# counters per device, not per pool, and no count of free blocks inside split
# segments. `oversize_*` are exact (0) while max_split_size is unlimited (the default).
UNCOUNTED = (
    "{stat}.large_pool.*",
    "{stat}.small_pool.*",
    "inactive_split.*",
    "inactive_split_bytes.*",
    "oversize_allocations.* (when max_split_size is set)",
    "oversize_segments.* (when max_split_size is set)",
)
_POOLS = ("all", "large_pool", "small_pool")


def _device_index(device: Any) -> int:
    import torch

    if device is None:
        # Not torch.cuda.is_available() or current_device() before CUDA is
        # initialized: both would initialize it (PyTorch's own stat functions
        # answer without initializing CUDA too). Until then the current device is 0.
        return torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        return device.index if device.index is not None else _device_index(None)
    raise TypeError(f"memfit: cannot read a device index from {device!r}")


def _zero() -> Dict[str, int]:
    return {"current": 0, "peak": 0, "allocated": 0, "freed": 0}


def _created(alloc: Allocator) -> bool:
    """False for the CUDA plugin's allocator before PyTorch's first CUDA allocation:
    touching its handle would create it (and initialize CUDA)."""
    return bool(getattr(alloc, "created", True))


def _plugin_size(key: str) -> int:
    """A size option of the plugin's allocator in bytes, as it is or will be
    created (MEMFIT_CONF, then install's options); creates nothing."""
    buf = ctypes.create_string_buffer(32)
    if lib().memfit_plugin_option(key.encode(), buf, len(buf)) != 0:
        raise MemfitError(lib().memfit_plugin_last_error().decode(errors="replace"))
    return int(buf.value.decode())


def capacity(alloc: Allocator, index: int) -> int:
    """memfit's capacity of a device in bytes (0: none); before the plugin's allocator
    exists, the capacity it will be created with (MEMFIT_CONF, then install's options)."""
    return alloc.capacity(index) if _created(alloc) else _plugin_size("capacity")


def max_split_size(alloc: Allocator) -> int:
    """The allocator's max_split_size in bytes, -1 when unlimited (as PyTorch reports SIZE_MAX)."""
    if not _created(alloc):
        return _plugin_size("max_split_size") or -1
    handle = lib()
    buf = ctypes.create_string_buffer(32)
    options = handle.mf_allocator_options(alloc.handle)
    check(handle.mf_options_get(options, b"max_split_size", buf, len(buf)), "reading max_split_size")
    value = int(buf.value.decode())
    return value if value else -1  # 0: never refuse to split


def nested_stats(alloc: Allocator, device: Any = None) -> Dict[str, Any]:
    """memfit's stats of a device in the shape of torch.cuda.memory_stats_as_nested_dict().

    For each stat, "allocated" and "freed" count from the last
    reset_accumulated_memory_stats: allocated = total increase since then,
    freed = allocated - (current - current then)."""
    index = _device_index(device)
    raw = alloc.stats(index)
    base = _baseline.get(index, {})
    out: Dict[str, Any] = {}
    for torch_name, mf_name in {**_BYTE_STATS, **_COUNT_STATS}.items():
        c = raw[mf_name]
        base_total, base_current = base.get(mf_name, (0, 0))
        allocated = c["total"] - base_total  # type: ignore[index]
        freed = allocated - (c["current"] - base_current)  # type: ignore[index]
        current, peak = c["current"], c["peak"]  # type: ignore[index]
        all_pools = {"current": current, "peak": peak, "allocated": allocated, "freed": freed}
        out[torch_name] = {
            "all": all_pools,
            "large_pool": _zero(),
            "small_pool": _zero(),
        }
    for name in ("inactive_split", "inactive_split_bytes"):
        out[name] = {pool: _zero() for pool in _POOLS}
    for torch_name, events in _EVENT_STATS.items():
        out[torch_name] = sum(int(raw[e]) - base.get(e, (0, 0))[0] for e in events)  # type: ignore[arg-type]
    out["max_split_size"] = max_split_size(alloc)
    out["oversize_allocations"] = _zero()
    out["oversize_segments"] = _zero()
    return out


def flat_stats(alloc: Allocator, device: Any = None) -> "collections.OrderedDict[str, Any]":
    """nested_stats flattened and sorted as torch.cuda.memory_stats() returns them."""
    flat = []

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.append((prefix, value))

    add("", nested_stats(alloc, device))
    flat.sort()
    return collections.OrderedDict(flat)


def reset_accumulated(alloc: Allocator, device: Any = None) -> None:
    """Start every stat's "allocated"/"freed" and the event counters from zero again."""
    index = _device_index(device)
    raw = alloc.stats(index)
    base: Dict[str, Tuple[int, int]] = {}
    for name in set(_BYTE_STATS.values()) | set(_COUNT_STATS.values()):
        base[name] = (raw[name]["total"], raw[name]["current"])  # type: ignore[index]
    for events in _EVENT_STATS.values():
        for e in events:
            base[e] = (int(raw[e]), 0)  # type: ignore[arg-type]
    _baseline[index] = base


def driver_mem_get_info(device: Any = None) -> Tuple[int, int]:
    """The driver's (free, total) for the device, as PyTorch's own mem_get_info gives it."""
    if _driver is not None:
        return _driver(device)
    import torch.cuda

    return torch.cuda.memory.mem_get_info(device)


def mem_get_info(alloc: Allocator, device: Any = None,
                 driver: Optional[Callable[[Any], Tuple[int, int]]] = None) -> Tuple[int, int]:
    """(free, total) as seen through memfit: what a caller can still allocate through it.

    With C = memfit's capacity of the device (0: none), R its reserved and A its
    allocated bytes, and (F, T) the driver's free and total:

        total = min(T, C)                         (T when C is 0)
        free  = min(F + (R - A), C - A)           (F + (R - A) when C is 0)

    memfit can hand out its cached bytes (R - A) and map new ones while the driver
    has them (F, which excludes what memfit already holds) and the capacity allows
    (C - R): (R - A) + min(F, C - R) is the formula above. It is the sum still
    available, not the largest single block; with page-mapped pools (vmm, the
    default) memfit moves free pages to where a request needs them, so the two
    stay close."""
    index = _device_index(device)
    driver_free, driver_total = (driver or driver_mem_get_info)(index)
    raw = alloc.stats(index)
    reserved = int(raw["reserved_bytes"]["current"])  # type: ignore[index]
    allocated = int(raw["allocated_bytes"]["current"])  # type: ignore[index]
    cached = max(reserved - allocated, 0)
    cap = capacity(alloc, index)
    free = driver_free + cached
    total = driver_total
    if cap:
        total = min(driver_total, cap)
        free = min(free, cap - allocated)
    return max(0, min(free, total)), total


def memory_fraction(alloc: Allocator, device: Any = None,
                    driver: Optional[Callable[[Any], Tuple[int, int]]] = None) -> float:
    """memfit's capacity as a fraction of the device's total memory (at most 1.0):
    what set_per_process_memory_fraction set, read back."""
    index = _device_index(device)
    _, driver_total = (driver or driver_mem_get_info)(index)
    cap = capacity(alloc, index)
    if not cap or not driver_total:
        return 1.0
    return min(cap / driver_total, 1.0)


def _accelerator_is_cuda() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not hasattr(accelerator, "current_accelerator"):
        return False
    current = accelerator.current_accelerator()
    return current is not None and current.type == "cuda"


def _patch(namespace: Any, name: str, fn: Callable[..., Any]) -> None:
    if not hasattr(namespace, name):
        return  # an older PyTorch without it
    key = (namespace, name)
    if key not in _saved:
        _saved[key] = getattr(namespace, name)
    setattr(namespace, name, fn)


def route_cuda_stats(alloc: Allocator, *, driver: Optional[Callable[[Any], Tuple[int, int]]] = None,
                     accelerator: Optional[bool] = None) -> None:
    """Make PyTorch's memory functions read `alloc` (idempotent; a later call re-routes).

    driver: the driver's (free, total) for a device index; default PyTorch's own
    torch.cuda.mem_get_info (tests pass a stand-in), reachable afterwards as
    driver_mem_get_info() and as torch.cuda.mem_get_info.__wrapped__. accelerator:
    route torch.accelerator's memory functions too; default when the current
    accelerator is CUDA."""
    global _routed, _driver
    import torch.cuda
    import torch.cuda.memory as mem

    original_mem_get_info = _saved.get((mem, "mem_get_info"), mem.mem_get_info)
    _driver = driver or original_mem_get_info

    def memory_stats_as_nested_dict(device: Any = None) -> Dict[str, Any]:
        return nested_stats(alloc, device)

    def reset_peak_memory_stats(device: Any = None) -> None:
        if _created(alloc):  # else nothing has been counted yet
            check(lib().mf_reset_peaks(alloc.handle, _device_index(device)), "resetting peaks")

    def reset_accumulated_memory_stats(device: Any = None) -> None:
        reset_accumulated(alloc, device)

    def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
        return alloc.memory_report(_device_index(device))

    def routed_mem_get_info(device: Any = None) -> Tuple[int, int]:
        return mem_get_info(alloc, device)

    def get_per_process_memory_fraction(device: Any = None) -> float:
        return memory_fraction(alloc, device)

    routed_mem_get_info.__wrapped__ = original_mem_get_info  # type: ignore[attr-defined]
    cuda_replacements = {
        "memory_stats_as_nested_dict": memory_stats_as_nested_dict,  # memory_stats, memory_allocated, ... read it
        "reset_peak_memory_stats": reset_peak_memory_stats,  # reset_max_memory_allocated/cached call it
        "reset_accumulated_memory_stats": reset_accumulated_memory_stats,
        "memory_summary": memory_summary,
        "mem_get_info": routed_mem_get_info,
        "get_per_process_memory_fraction": get_per_process_memory_fraction,
    }
    for name, fn in cuda_replacements.items():
        _patch(mem, name, fn)  # torch.cuda.memory's functions look these up in mem at each call
        _patch(torch.cuda, name, fn)

    if accelerator is None:
        accelerator = _accelerator_is_cuda()
    if accelerator:
        _route_accelerator(alloc, memory_stats_as_nested_dict, reset_peak_memory_stats,
                           reset_accumulated_memory_stats, routed_mem_get_info)
    _routed = alloc
    _route_snapshot(alloc)


def _route_accelerator(alloc: Allocator, nested_fn: Callable[..., Any], reset_peak_fn: Callable[..., Any],
                       reset_accumulated_fn: Callable[..., Any], mem_info_fn: Callable[..., Any]) -> None:
    import torch.accelerator
    import torch.accelerator.memory as amem

    def memory_stats(device_index: Any = None, /) -> "collections.OrderedDict[str, Any]":
        return flat_stats(alloc, device_index)

    def counter(stat: str, field: str) -> Callable[..., int]:
        def read(device_index: Any = None, /) -> int:
            return int(nested_fn(device_index)[stat]["all"][field])

        return read

    replacements = {
        "memory_stats": memory_stats,
        "memory_allocated": counter("allocated_bytes", "current"),
        "max_memory_allocated": counter("allocated_bytes", "peak"),
        "memory_reserved": counter("reserved_bytes", "current"),
        "max_memory_reserved": counter("reserved_bytes", "peak"),
        "reset_peak_memory_stats": lambda device_index=None, /: reset_peak_fn(device_index),
        "reset_accumulated_memory_stats": lambda device_index=None, /: reset_accumulated_fn(device_index),
        "get_memory_info": lambda device_index=None, /: mem_info_fn(device_index),
        # empty_cache goes to memfit's reset hook already: PyTorch's own works.
    }
    for name, fn in replacements.items():
        _patch(amem, name, fn)
        _patch(torch.accelerator, name, fn)


def _snapshot_module() -> Any:
    """memfit.snapshot if it exists (it routes memory_snapshot / _snapshot / _record_memory_history), else None."""
    name = f"{__package__}.snapshot"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def _route_snapshot(alloc: Allocator) -> None:
    route = getattr(_snapshot_module(), "route_torch_snapshot", None)
    if route is not None:
        route(alloc)


def routed() -> Optional[Allocator]:
    """The allocator PyTorch's memory functions read now, or None."""
    return _routed


def unroute_cuda_stats() -> None:
    """Put PyTorch's own functions back (tests)."""
    global _routed, _driver
    for (namespace, name), fn in _saved.items():
        setattr(namespace, name, fn)
    _saved.clear()
    _baseline.clear()
    _routed = None
    _driver = None
    snapshot = sys.modules.get(f"{__package__}.snapshot")
    unroute = getattr(snapshot, "unroute_torch_snapshot", None)
    if unroute is not None:
        unroute()
