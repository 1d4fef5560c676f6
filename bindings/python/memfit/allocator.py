"""A Python handle on one memfit allocator: stats by category and layer, the
tag context, re-tagging by pointer, reports and the in-memory trace."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Dict, Iterator, List, Optional

from . import _lib
from ._lib import MemfitError, categories, category_id, check, lib, phase_id


def layer_id(name: str) -> int:
    """The interned id of a layer name (process-wide; "" is 0, no layer)."""
    if not name:
        return 0
    layer = lib().mf_layer_intern(name.encode())
    if layer == 0:
        raise MemfitError(f"memfit: cannot intern layer name {name!r}: {_lib.last_error()}")
    return layer


def layer_name(layer: int) -> str:
    name = lib().mf_layer_name(layer)
    return name.decode() if name else f"<layer {layer}>"


@contextlib.contextmanager
def tag(layer: str = "", phase: str = "none", category: str = "other") -> Iterator[None]:
    """Tag the calling thread's allocations inside the block."""
    push_tag(layer_id(layer), phase, category)
    try:
        yield
    finally:
        lib().mf_tag_pop()


def push_tag(layer: int, phase: str, category: str) -> None:
    check(lib().mf_tag_push(layer, phase_id(phase), category_id(category)), "tag push")


def pop_tag() -> None:
    check(lib().mf_tag_pop(), "tag pop")


class Allocator:
    """One memfit allocator, owned (created here) or borrowed (PyTorch's plugin instance)."""

    def __init__(self, handle: int, device: str, index: int = 0, owned: bool = False) -> None:
        if not handle:
            raise MemfitError("memfit: NULL allocator handle")
        self._handle: Optional[ctypes.c_void_p] = ctypes.c_void_p(handle)
        self.device = device  # "cpu" or "cuda"
        self.index = index  # the device index inside the allocator
        self._owned = owned

    @property
    def handle(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise MemfitError("memfit: this allocator was closed")
        return self._handle

    def close(self) -> None:
        """Destroy an allocator created here (Allocator.create): its segments go back
        to the backend and its blocks are forgotten. Refused for one that may still
        hold tensors: PyTorch's CPU or CUDA allocator installed by memfit.install.
        Closing twice is a no-op."""
        if self._handle is None:
            return
        if not self._owned:
            raise MemfitError("memfit: Allocator.close: this allocator is not memfit's to destroy (it is the "
                              "CUDA plugin's, which lives as long as the process)")
        if getattr(self, "_installed", False):  # set by memfit.install: tensors free into it, even after uninstall
            raise MemfitError("memfit: Allocator.close: this allocator was installed under PyTorch, and tensors "
                              "it served may still free into it; it lives as long as the process")
        lib().mf_allocator_destroy(self._handle)
        self._handle = None

    def __enter__(self) -> "Allocator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def create(cls, conf: str, device: str = "cpu") -> "Allocator":
        out = ctypes.c_void_p()
        check(lib().mf_allocator_create(conf.encode(), ctypes.byref(out)), f"creating an allocator from {conf!r}")
        return cls(out.value, device, owned=True)

    # ------------------------------------------------------------- stats
    def stats(self, device: Optional[int] = None) -> Dict[str, object]:
        """Global counters as {name: {current, peak, total}} and events as ints."""
        stats_type = _lib.stats_struct()  # laid out from the library's own field lists
        raw = stats_type()
        check(lib().mf_get_stats(self.handle, self._dev(device), ctypes.byref(raw)), "reading stats")
        if raw.struct_size != ctypes.sizeof(stats_type):
            raise MemfitError(f"memfit: libmemfit.so's mf_stats is {raw.struct_size} bytes, but its field lists "
                              f"give {ctypes.sizeof(stats_type)}: mf_counter's layout changed")
        counters, events = _lib.stats_fields()
        out: Dict[str, object] = {}
        for name in counters:
            c = getattr(raw, name)
            out[name] = {"current": c.current, "peak": c.peak, "total": c.total}
        for name in events:
            out[name] = getattr(raw, name)
        return out

    def allocated(self) -> int:
        return self.stats()["allocated_bytes"]["current"]  # type: ignore[index]

    def category_stats(self, category: str, device: Optional[int] = None) -> Dict[str, Dict[str, int]]:
        raw = _lib.TagStats()
        check(
            lib().mf_get_category_stats(self.handle, self._dev(device), category_id(category), ctypes.byref(raw)),
            f"reading stats of category {category}",
        )
        return _tag_stats_dict(raw)

    def categories(self, device: Optional[int] = None) -> Dict[str, Dict[str, Dict[str, int]]]:
        return {c: self.category_stats(c, device) for c in categories()}

    def tag_stats(self, category: str, layer: str, device: Optional[int] = None) -> Dict[str, Dict[str, int]]:
        raw = _lib.TagStats()
        check(
            lib().mf_get_tag_stats(self.handle, self._dev(device), category_id(category), layer_id(layer), ctypes.byref(raw)),
            f"reading stats of ({category}, {layer})",
        )
        return _tag_stats_dict(raw)

    def layer_table(self, device: Optional[int] = None) -> List[Dict[str, object]]:
        """Current and peak requested bytes per (layer, category), from the stats JSON."""
        import json

        data = json.loads(_lib.read_string(lib().mf_stats_json, self.handle, self._dev(device)))
        return data.get("layers", [])

    def reset_peaks(self) -> None:
        check(lib().mf_reset_peaks(self.handle, -1), "resetting peaks")

    def empty_cache(self) -> None:
        check(lib().mf_empty_cache(self.handle), "empty_cache")

    def memory_report(self, device: Optional[int] = None) -> str:
        return _lib.read_string(lib().mf_memory_report, self.handle, self._dev(device))

    def oom_report(self) -> str:
        return _lib.read_string(lib().mf_oom_report, self.handle)

    def capacity(self, device: Optional[int] = None) -> int:
        return int(lib().mf_capacity(self.handle, self._dev(device)))

    def granule(self) -> int:
        """The page-mapped pools' granule in bytes; 0 when memfit maps segments (vmm off)."""
        return int(lib().mf_allocator_granule(self.handle))

    def set_capacity(self, nbytes: int, device: Optional[int] = None) -> None:
        check(lib().mf_set_capacity(self.handle, self._dev(device), nbytes), "setting the capacity")

    def check(self) -> None:
        """Walk every block and check the allocator's invariants."""
        check(lib().mf_check(self.handle), "invariant check")

    # ------------------------------------------------------------ blocks
    def block_info(self, ptr: int) -> Optional[Dict[str, object]]:
        """Tag and sizes of a live block, or None if ptr is not one of this allocator's blocks."""
        t, requested, size = _lib.Tag(), ctypes.c_size_t(), ctypes.c_size_t()
        if lib().mf_block_info(self.handle, ctypes.c_void_p(ptr), ctypes.byref(t), ctypes.byref(requested),
                               ctypes.byref(size)) != _lib.MF_OK:
            return None
        return {
            "category": categories()[t.category],
            "layer": layer_name(t.layer) if t.layer else "",
            "phase": _lib.phases()[t.phase],
            "requested": requested.value,
            "size": size.value,
        }

    def retag(self, ptr: int, category: str, layer: str = "", phase: str = "none") -> bool:
        """Re-tag a live block; False if ptr is not one of this allocator's blocks."""
        t = _lib.Tag(layer_id(layer), category_id(category), phase_id(phase))
        return lib().mf_retag(self.handle, ctypes.c_void_p(ptr), t) == _lib.MF_OK

    def retag_live(self, phase: str, from_category: str, to_category: str) -> int:
        n = ctypes.c_size_t()
        check(
            lib().mf_retag_live(self.handle, -1, phase_id(phase), category_id(from_category), category_id(to_category),
                               ctypes.byref(n)),
            "re-tagging live blocks",
        )
        return n.value

    # ------------------------------------------------------------- trace
    def trace_start(self, max_events: int = 1 << 22) -> None:
        check(lib().mf_trace_start(self.handle, max_events), "starting the trace")

    def trace_mark(self, mark: int) -> None:
        lib().mf_trace_mark(self.handle, mark)

    def trace_stop(self) -> None:
        check(lib().mf_trace_stop(self.handle), "stopping the trace")

    def trace_events(self) -> "ctypes.Array[_lib.TraceEvent]":
        n, dropped = ctypes.c_size_t(), ctypes.c_size_t()
        check(lib().mf_trace_count(self.handle, ctypes.byref(n), ctypes.byref(dropped)), "reading the trace")
        if dropped.value:
            raise MemfitError(
                f"memfit: the trace dropped {dropped.value} events (capacity {n.value}); "
                "profile fewer steps or a smaller model"
            )
        buf = (_lib.TraceEvent * n.value)()
        copied = ctypes.c_size_t()
        check(lib().mf_trace_read(self.handle, 0, buf, n.value, ctypes.byref(copied)), "reading the trace")
        return buf

    def _dev(self, device: Optional[int]) -> int:
        return self.index if device is None else device

    def __repr__(self) -> str:
        where = f"at {self._handle.value:#x}" if getattr(self, "_handle", None) is not None else "(closed)"
        return f"<memfit.Allocator {self.device}:{self.index} {where}>"


def _tag_stats_dict(raw: "_lib.TagStats") -> Dict[str, Dict[str, int]]:
    return {
        f: {"current": getattr(raw, f).current, "peak": getattr(raw, f).peak, "total": getattr(raw, f).total}
        for f in ("bytes", "requested", "blocks")
    }
