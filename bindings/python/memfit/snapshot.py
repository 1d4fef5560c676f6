"""memfit.snapshot: PyTorch's memory snapshot (the pickle that
`python -m torch.cuda._memory_viz` and pytorch.org/memory_viz open) built from
memfit's own records, each block's and trace entry's frames naming its layer,
category and phase; and route_torch_snapshot(), which makes torch.cuda.memory's
snapshot functions answer from memfit. Importing this module does not import torch."""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._lib import MemfitError, categories, check, lib, phases
from .allocator import Allocator, layer_name

# memfit's block state -> PyTorch's (torch/csrc/cuda/memory_snapshot.cpp and MemoryViz.js)
BLOCK_STATES = {"allocated": "active_allocated", "pending_free": "active_pending_free", "free": "inactive"}
NO_LAYER = "(no layer)"
# What _record_memory_history("all") records at most when it asks for more
# (PyTorch's default is sys.maxsize): memfit's trace takes 48 bytes per event,
# reserved up front (pages are touched only as events arrive).
HISTORY_MAX_EVENTS = 1 << 22
# MemoryViz.js (pytorch.org/memory_viz) unpickles protocols 2 to 4 only; Python
# 3.14 writes 5 by default.
PICKLE_PROTOCOL = 4

TraceEvents = Sequence[_lib.TraceEvent]
_FrameKey = Tuple[str, str, str]


def frames(layer: str, category: str, phase: str) -> List[Dict[str, Any]]:
    """A block's "stack" as memory_viz shows it: one frame each for its phase,
    category and layer (innermost first, so flame graphs nest layer > category >
    phase). The value sits in `filename`: memory_viz hides frames whose *name*
    contains strings such as "_start", which module paths may hold; it shows
    frames as FILENAME:LINE:NAME, e.g. "blocks.0.attn:0:layer"."""
    return [
        {"filename": phase, "line": 0, "name": "phase"},
        {"filename": category, "line": 0, "name": "category"},
        {"filename": layer or NO_LAYER, "line": 0, "name": "layer"},
    ]


def memfit_snapshot_json(alloc: Allocator, device: int = -1) -> Dict[str, Any]:
    """mf_snapshot_json parsed: memfit's own view, one consistent instant."""
    size = 1 << 16
    while True:  # the state can grow between a call that sizes and one that copies
        buf = ctypes.create_string_buffer(size)
        needed = ctypes.c_size_t()
        check(lib().mf_snapshot_json(alloc.handle, device, buf, size, ctypes.byref(needed)), "taking a snapshot")
        if needed.value <= size:
            return json.loads(buf.value.decode(errors="replace"))
        size = needed.value + needed.value // 4


def _read_trace(alloc: Allocator, count: int) -> "ctypes.Array[_lib.TraceEvent]":
    buf = (_lib.TraceEvent * count)()
    copied = ctypes.c_size_t()
    check(lib().mf_trace_read(alloc.handle, 0, buf, count, ctypes.byref(copied)), "reading the trace")
    if copied.value != count:
        raise MemfitError(f"memfit.snapshot: the trace shrank to {copied.value} events while it was read (restarted?)")
    return buf


def recorded_trace(alloc: Allocator) -> Optional["ctypes.Array[_lib.TraceEvent]"]:
    """The allocator's recorded trace, or None (with a warning) when it dropped
    events: a trace with a gap cannot lead to the state a snapshot shows."""
    n, dropped = ctypes.c_size_t(), ctypes.c_size_t()
    check(lib().mf_trace_count(alloc.handle, ctypes.byref(n), ctypes.byref(dropped)), "reading the trace")
    if dropped.value:
        warnings.warn(f"memfit.snapshot: the trace dropped {dropped.value} events after {n.value}; "
                      "the snapshot has no device_traces", stacklevel=3)
        return None
    return _read_trace(alloc, n.value)


class _FrameCache:
    """One frames list per tag, shared by every block and entry with it: pickle
    then stores each once."""

    def __init__(self) -> None:
        self._frames: Dict[_FrameKey, List[Dict[str, Any]]] = {}

    def get(self, layer: str, category: str, phase: str) -> List[Dict[str, Any]]:
        key = (layer, category, phase)
        shared = self._frames.get(key)
        if shared is None:
            shared = self._frames[key] = frames(*key)
        return shared


class _TraceBuilder:
    """memfit's trace events -> PyTorch's TraceEntry dicts, one list per device."""

    def __init__(self, devices: int, page_mapped: bool, cache: "_FrameCache") -> None:
        self.traces: List[List[Dict[str, Any]]] = [[] for _ in range(devices)]
        self.map_action, self.unmap_action = (
            ("segment_map", "segment_unmap") if page_mapped else ("segment_alloc", "segment_free"))
        self._cache = cache
        self._names: Dict[int, str] = {}
        self._live: Dict[Tuple[int, int], Dict[str, Any]] = {}  # (device, addr) -> its alloc entry
        self._completed: Dict[Tuple[int, int], Dict[str, Any]] = {}  # (device, addr) -> its last free_completed
        self.last_us = 0

    def _tag(self, layer: int, category: int, phase: int) -> Tuple[str, List[Dict[str, Any]]]:
        name = self._names.get(layer)
        if name is None:
            name = self._names[layer] = layer_name(layer) if layer else ""
        cats, phase_names = categories(), phases()
        cat = cats[category] if category < len(cats) else "other"
        return cat, self._cache.get(name, cat, phase_names[phase] if phase < len(phase_names) else "none")

    def add(self, e: _lib.TraceEvent) -> None:
        device, kind = e.device, e.kind
        if not 0 <= device < len(self.traces):
            return  # marks (device -1)
        trace = self.traces[device]
        us = e.t_ns // 1000
        self.last_us = max(self.last_us, us)
        if kind == _lib.TRACE_ALLOC:
            category, fr = self._tag(e.layer, e.category, e.phase)
            entry = {"action": "alloc", "addr": e.addr, "size": e.requested, "stream": 0, "time_us": us,
                     "frames": fr, "category": category}
            trace.append(entry)
            self._live[(device, e.addr)] = entry
        elif kind == _lib.TRACE_RETAG:
            # What the block turned out to be (an activation, a parameter) is
            # what the timeline colours it by: the alloc entry takes the new tag.
            entry = self._live.get((device, e.addr))
            if entry is not None:
                entry["category"], entry["frames"] = self._tag(e.layer, e.category, e.phase)
        elif kind == _lib.TRACE_FREE:
            self._live.pop((device, e.addr), None)
            category, fr = self._tag(e.layer, e.category, e.phase)
            for action in ("free_requested", "free_completed"):  # memory_viz pairs them into one "free"
                trace.append({"action": action, "addr": e.addr, "size": e.requested, "stream": 0, "time_us": us,
                              "frames": fr, "category": category})
            self._completed[(device, e.addr)] = trace[-1]
        elif kind in (_lib.TRACE_SEGMENT_MAP, _lib.TRACE_SEGMENT_UNMAP):
            action = self.map_action if kind == _lib.TRACE_SEGMENT_MAP else self.unmap_action
            trace.append({"action": action, "addr": e.addr, "size": e.size, "stream": 0, "time_us": us,
                          "frames": []})

    def finish(self, pending: Sequence[Tuple[int, int]]) -> List[List[Dict[str, Any]]]:
        """pending: (device, address) of the blocks the state holds as pending
        frees. memfit's trace records a free when it is asked for, not when its
        record_stream events complete: each free is taken as completed at once,
        except the last free of a block still pending, which stays requested."""
        drop = {id(self._completed[key]) for key in pending if key in self._completed}
        if drop:
            self.traces = [[t for t in trace if id(t) not in drop] for trace in self.traces]
        # PyTorch marks each snapshot in its trace. The "unknown" category here is
        # also what MemoryViz.js needs: it assumes "unknown" is among the
        # categories it has seen and fails to draw otherwise.
        for trace in self.traces:
            if trace:
                trace.append({"action": "snapshot", "addr": 0, "size": 0, "stream": 0, "time_us": self.last_us,
                              "frames": [], "category": "unknown"})
        return self.traces


def _segment(seg: Dict[str, Any], cache: _FrameCache) -> Dict[str, Any]:
    blocks = []
    allocated = active = requested = 0
    for b in seg["blocks"]:
        state = BLOCK_STATES[b["state"]]
        if b["state"] == "free":
            blocks.append({"address": b["address"], "size": b["size"], "requested_size": 0, "state": state,
                           "frames": []})
            continue
        blocks.append({"address": b["address"], "size": b["size"], "requested_size": b["requested"],
                       "state": state, "frames": cache.get(b["layer"], b["category"], b["phase"])})
        active += b["size"]
        if b["state"] == "allocated":
            allocated += b["size"]
            requested += b["requested"]
    return {
        "device": seg["device"],
        "address": seg["address"],
        "total_size": seg["size"],
        "allocated_size": allocated,
        "active_size": active,
        "requested_size": requested,
        "stream": seg["stream"],
        "segment_type": seg["pool"],
        "segment_pool_id": (0, 0),  # memfit has no private (CUDA graph) pools
        "is_expandable": bool(seg["page_mapped"]),
        "frames": [],
        "blocks": blocks,
    }


def allocator_settings(alloc: Allocator) -> Dict[str, str]:
    """memfit's options as this allocator reads them (the viewer's "Allocator Settings")."""
    options = lib().mf_allocator_options(alloc.handle)
    out = {"allocator": f"memfit {lib().mf_version().decode()}"}
    buf = ctypes.create_string_buffer(4096)
    for key in _lib.option_keys():
        if options and lib().mf_options_get(options, key.encode(), buf, len(buf)) == _lib.MF_OK:
            out[key] = buf.value.decode(errors="replace")
    return out


def _empty(alloc: Allocator) -> Dict[str, Any]:
    return {"segments": [], "device_traces": [[]],
            "memfit": {"format": "memfit-snapshot", "device": alloc.device, "devices": [], "granule": 0}}


def snapshot(path: Union[str, "os.PathLike[str]", None] = None, allocator: Optional[Allocator] = None,
             trace: Union[None, bool, TraceEvents] = None) -> Dict[str, Any]:
    """PyTorch's memory snapshot of memfit's allocator (default: memfit.current()),
    pickled to `path` when given; the dict torch.cuda.memory._snapshot() returns:

    - "segments": every segment of every device with its blocks, each block
      "active_allocated", "active_pending_free" (freed, held back by
      record_stream events) or "inactive", its frames naming the block's layer,
      category and phase (see frames());
    - "device_traces": one list per device of alloc / free_requested +
      free_completed / segment_alloc + segment_free (segment_map + segment_unmap
      with page-mapped pools) entries ending in a "snapshot" entry, each
      alloc and free with the block's last tag as frames and "category";
      stream 0 (memfit's trace does not record streams), sizes requested bytes,
      as PyTorch's are; a free held back by record_stream events completes at
      once, unless its block is still pending (then only free_requested);
    - "allocator_settings": memfit's options (the viewer's "Allocator Settings");
    - "memfit": memfit's own numbers at that instant (devices' stats, granule).

    trace: None takes memfit's in-memory trace while it is recording (it then
    leads exactly to this state; a trace stopped earlier need not, and is left
    out); False leaves the trace out; True takes the recorded trace even when
    stopped, and a sequence of trace events (Allocator.trace_events()) is used
    as given: both must end where this state begins, so take the snapshot right
    after stopping the trace, before anything allocates or frees."""
    if allocator is None:
        from .install import current

        allocator = current()
        if allocator is None:
            raise MemfitError("memfit.snapshot: memfit is not installed (memfit.install() first, or pass allocator=)")
    if not getattr(allocator, "created", True):  # the CUDA plugin's allocator before the first CUDA allocation
        result = _empty(allocator)
    else:
        raw = memfit_snapshot_json(allocator, -1)
        events: Optional[TraceEvents] = None
        if trace is None:
            info = raw["trace"]
            if info["recording"] and info["dropped"]:
                warnings.warn(f"memfit.snapshot: the trace dropped {info['dropped']} events; "
                              "the snapshot has no device_traces", stacklevel=2)
            elif info["recording"]:
                events = _read_trace(allocator, info["events"])  # exactly the events up to this state
        elif trace is True:
            events = recorded_trace(allocator)
        elif trace is not False:
            events = trace
        cache = _FrameCache()
        builder = _TraceBuilder(len(raw["devices"]), raw["granule"] != 0, cache)
        for e in events or ():
            builder.add(e)
        result = {
            "segments": [_segment(seg, cache) for seg in raw["segments"]],
            "device_traces": builder.finish([(seg["device"], b["address"]) for seg in raw["segments"]
                                             for b in seg["blocks"] if b["state"] == "pending_free"]),
            "allocator_settings": allocator_settings(allocator),
            "memfit": {"format": raw["format"], "version": raw["version"], "memfit_version": raw["memfit_version"],
                       "device": allocator.device, "granule": raw["granule"], "devices": raw["devices"]},
        }
    if path is not None:
        with open(path, "wb") as f:
            pickle.dump(result, f, protocol=PICKLE_PROTOCOL)
    return result


# ------------------------------------------------ torch.cuda.memory, routed

_saved: Dict[Tuple[Any, str], Any] = {}
_history: Dict[str, Any] = {"allocator": None}  # the allocator whose trace _record_memory_history started


def _trace_recording(alloc: Allocator) -> bool:
    return bool(memfit_snapshot_json(alloc, -1)["trace"]["recording"])


def record_memory_history(alloc: Allocator, enabled: Any = "all", *args: Any, **kwargs: Any) -> None:
    """torch.cuda.memory._record_memory_history under memfit.

    PyTorch's raises under a pluggable allocator ("does not yet support
    recordHistory"). memfit needs no switch for the state: every block always
    carries its layer, category and phase, so _snapshot() names them in each
    block's frames whatever was asked. What the call still switches is the
    history (device_traces):

    - "all" (or the legacy enabled=True with trace_alloc_max_entries > 1) starts
      memfit's in-memory trace of at most max_entries events (at most
      HISTORY_MAX_EVENTS), unless a trace is already recording (memfit.profile's):
      that one is left alone and serves. clear_history=True restarts the trace
      this function started. The trace stops recording when full (PyTorch's
      keeps the latest entries); a snapshot then leaves the trace out, with a warning.
    - "state", None or False: no history; None and False stop the trace this
      function started (never one that memfit.profile started).

    context, stacks, compile_context, skip_actions and the rest are accepted and
    ignored: memfit records tags, not Python or C++ stacks. Like PyTorch's, it
    may create the allocator (and so initialize CUDA) to start the trace."""
    if isinstance(enabled, bool):  # the legacy signature: (enabled, record_context, trace_alloc_max_entries, ...)
        legacy_entries = args[1] if len(args) > 1 else kwargs.get("trace_alloc_max_entries", 1)
        mode: Optional[str] = ("all" if legacy_entries > 1 else "state") if enabled else None
        max_entries, clear = int(legacy_entries), bool(kwargs.get("clear_history", False))
    else:
        if enabled not in (None, "state", "all"):
            raise MemfitError(f"memfit: _record_memory_history: expected enabled to be 'state', 'all' or None, "
                              f"not {enabled!r}")
        mode = enabled
        positional = ("context", "stacks", "max_entries", "device", "clear_history")
        options = dict(zip(positional, args))
        options.update(kwargs)
        max_entries = int(options.get("max_entries", sys.maxsize))
        clear = bool(options.get("clear_history", False))
    owner = _history["allocator"]
    if owner is not None and (mode != "all" or owner is not alloc):
        owner.trace_stop()  # history off, or routed to another allocator since
        _history["allocator"] = owner = None
    if mode != "all" or (owner is alloc and not clear):
        return
    if owner is None and _trace_recording(alloc):
        return  # a trace someone else started (memfit.profile's) is recording: it serves
    alloc.trace_start(max(1, min(max_entries, HISTORY_MAX_EVENTS)))
    _history["allocator"] = alloc


def route_torch_snapshot(alloc: Allocator) -> None:
    """Make torch.cuda.memory._snapshot() (and so _dump_snapshot,
    torch.accelerator.memory._snapshot) and torch.cuda.memory_snapshot() answer
    from `alloc`, and torch.cuda.memory._record_memory_history harmless (see
    record_memory_history). Idempotent; a later call re-routes. Under a pluggable
    allocator PyTorch's own versions raise."""
    import torch.cuda
    import torch.cuda.memory as mem

    def _snapshot(device: Any = None, augment_with_fx_traces: bool = False) -> Dict[str, Any]:
        # Every device, as PyTorch's; memfit's frames are tags, not FX code, so
        # there is nothing for augment_with_fx_traces to map.
        return snapshot(allocator=alloc)

    def memory_snapshot(mempool_id: Any = None, include_traces: bool = True) -> List[Dict[str, Any]]:
        if mempool_id is not None:
            return []  # memfit has no private pools: no segment belongs to one
        return snapshot(allocator=alloc, trace=False)["segments"]  # the segments only: no trace to build

    def _record_memory_history(enabled: Any = "all", *args: Any, **kwargs: Any) -> None:
        record_memory_history(alloc, enabled, *args, **kwargs)

    _record_memory_history.__doc__ = record_memory_history.__doc__
    for name, fn in (("_snapshot", _snapshot), ("memory_snapshot", memory_snapshot),
                     ("_record_memory_history", _record_memory_history)):
        for namespace in (mem, torch.cuda):
            if not hasattr(namespace, name):
                continue  # torch.cuda re-exports memory_snapshot only
            if (namespace, name) not in _saved:
                _saved[(namespace, name)] = getattr(namespace, name)
            setattr(namespace, name, fn)


def unroute_torch_snapshot() -> None:
    """Put PyTorch's own functions back and stop a trace _record_memory_history started (tests)."""
    for (namespace, name), fn in _saved.items():
        setattr(namespace, name, fn)
    _saved.clear()
    owner = _history["allocator"]
    if owner is not None:
        owner.trace_stop()
        _history["allocator"] = None
