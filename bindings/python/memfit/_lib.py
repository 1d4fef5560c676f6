"""ctypes over libmemfit.so: finding the library, the C prototypes and structs,
and the one exception type that carries the C library's message."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

CATEGORIES = (
    "parameter",
    "gradient",
    "optimizer_state",
    "activation",
    "temporary",
    "input",
    "other",
)
PHASES = ("none", "forward", "backward", "optimizer", "recompute")
CAT = {name: i for i, name in enumerate(CATEGORIES)}
PHASE = {name: i for i, name in enumerate(PHASES)}

# mf_status values (allocator/include/memfit/memfit.h)
MF_OK, MF_ERR_INVALID, MF_ERR_OOM = 0, 1, 2
TRACE_ALLOC, TRACE_FREE, TRACE_RETAG, TRACE_MARK, TRACE_SEGMENT_MAP, TRACE_SEGMENT_UNMAP = range(6)


class MemfitError(RuntimeError):
    """An error reported by memfit's C library or by the bindings."""


class NothingFitsError(MemfitError):
    """The planner found no plan: not even batch 1 with every layer checkpointed fits the budget."""


class MemfitOutOfMemoryError(MemfitError):
    """A request that did not fit the device's capacity (memfit's OOM report in the message)."""


OOM_PREFIXES = ("CUDA out of memory.", "memfit: CPU out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error: torch.OutOfMemoryError (what memfit
    raises when libmemfit_torch.so matches the running PyTorch), memfit's own, or a
    plain RuntimeError whose message starts like PyTorch's OOMs (the CUDA plugin's
    OOM when no libtorch-built thrower could be registered)."""
    if isinstance(exc, MemfitOutOfMemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and str(exc).lstrip().startswith(OOM_PREFIXES)


_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parents[2]  # bindings/python/memfit -> the checkout's root
_BUILD_DIRS = ("build", "build-release")


def _candidates(env: str, filename: str, subdir: str) -> list[Path]:
    """Where to look for a library: the environment variable, the installed
    package's own copy, then the checkout's build directories."""
    found: list[Path] = []
    if os.environ.get(env):
        return [Path(os.environ[env])]
    found.append(_PACKAGE_DIR / "_libs" / filename)
    build_dir = os.environ.get("MEMFIT_BUILD_DIR")
    dirs = [Path(build_dir)] if build_dir else [_REPO_DIR / d for d in _BUILD_DIRS]
    found.extend(d / subdir / filename for d in dirs)
    return found


def find_library(env: str, filename: str, subdir: str) -> Optional[Path]:
    for path in _candidates(env, filename, subdir):
        if path.is_file():
            return path.resolve()
    return None


class _Counter(ctypes.Structure):
    _fields_ = [("current", ctypes.c_int64), ("peak", ctypes.c_int64), ("total", ctypes.c_int64)]


_COUNTERS = ("requested_bytes", "allocated_bytes", "reserved_bytes", "active_blocks", "segments")
_EVENTS = (
    "allocs",
    "frees",
    "cache_hits",
    "cache_misses",
    "ooms",
    "segment_maps",
    "segment_unmaps",
    "ladder_releases",
    "deferred_frees",
    "granule_maps",
    "granule_unmaps",
    "granule_creates",
    "granule_releases",
    "syncs",
)
STATS_VERSION = 2


class Stats(ctypes.Structure):
    _fields_ = (
        [("struct_size", ctypes.c_uint32), ("version", ctypes.c_uint32)]
        + [(name, _Counter) for name in _COUNTERS]
        + [(name, ctypes.c_int64) for name in _EVENTS]
    )


class TagStats(ctypes.Structure):
    _fields_ = [("bytes", _Counter), ("requested", _Counter), ("blocks", _Counter)]


class Tag(ctypes.Structure):
    _fields_ = [("layer", ctypes.c_uint32), ("category", ctypes.c_uint8), ("phase", ctypes.c_uint8)]


class TraceEvent(ctypes.Structure):
    _fields_ = [
        ("t_ns", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
        ("requested", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("layer", ctypes.c_uint32),
        ("kind", ctypes.c_uint8),
        ("category", ctypes.c_uint8),
        ("phase", ctypes.c_uint8),
        ("device", ctypes.c_int8),
        ("old_layer", ctypes.c_uint32),
        ("old_category", ctypes.c_uint8),
        ("old_phase", ctypes.c_uint8),
        ("reserved", ctypes.c_uint16),
    ]


assert ctypes.sizeof(TraceEvent) == 48

_P = ctypes.c_void_p
_S = ctypes.c_int  # mf_status
_SZ = ctypes.c_size_t
_PROTOTYPES = {
    "mf_last_error": (ctypes.c_char_p, []),
    "mf_last_status": (_S, []),
    "mf_version": (ctypes.c_char_p, []),
    "mf_layer_intern": (ctypes.c_uint32, [ctypes.c_char_p]),
    "mf_layer_name": (ctypes.c_char_p, [ctypes.c_uint32]),
    "mf_layer_count": (ctypes.c_uint32, []),
    "mf_tag_push": (_S, [ctypes.c_uint32, ctypes.c_int, ctypes.c_int]),
    "mf_tag_pop": (_S, []),
    "mf_tag_current": (Tag, []),
    "mf_tag_depth": (ctypes.c_int, []),
    "mf_tag_set_shared": (_S, [Tag]),
    "mf_tag_clear_shared": (None, []),
    "mf_parse_size": (_S, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]),
    "mf_options_count": (ctypes.c_int, []),
    "mf_options_key": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_options_help": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_options_new": (_P, []),
    "mf_options_parse": (_S, [_P, ctypes.c_char_p]),
    "mf_options_free": (None, [_P]),
    "mf_allocator_create": (_S, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "mf_allocator_destroy": (None, [_P]),
    "mf_allocator_device_count": (ctypes.c_int, [_P]),
    "mf_malloc": (_P, [_P, ctypes.c_int, _SZ, ctypes.c_uint64]),
    "mf_free": (_S, [_P, _P]),
    "mf_empty_cache": (_S, [_P]),
    "mf_retag": (_S, [_P, _P, Tag]),
    "mf_retag_live": (_S, [_P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_SZ)]),
    "mf_block_info": (_S, [_P, _P, ctypes.POINTER(Tag), ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)]),
    "mf_set_capacity": (_S, [_P, ctypes.c_int, ctypes.c_uint64]),
    "mf_capacity": (ctypes.c_uint64, [_P, ctypes.c_int]),
    "mf_allocator_granule": (ctypes.c_size_t, [_P]),
    "mf_check": (_S, [_P]),
    "mf_get_stats": (_S, [_P, ctypes.c_int, ctypes.POINTER(Stats)]),
    "mf_get_tag_stats": (_S, [_P, ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(TagStats)]),
    "mf_get_category_stats": (_S, [_P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(TagStats)]),
    "mf_reset_peaks": (_S, [_P, ctypes.c_int]),
    "mf_stats_json": (_S, [_P, ctypes.c_int, ctypes.c_char_p, _SZ, ctypes.POINTER(_SZ)]),
    "mf_oom_report": (_S, [_P, ctypes.c_char_p, _SZ, ctypes.POINTER(_SZ)]),
    "mf_memory_report": (_S, [_P, ctypes.c_int, ctypes.c_char_p, _SZ, ctypes.POINTER(_SZ)]),
    "mf_trace_start": (_S, [_P, _SZ]),
    "mf_trace_stop": (_S, [_P]),
    "mf_trace_mark": (_S, [_P, ctypes.c_uint64]),
    "mf_trace_count": (_S, [_P, ctypes.POINTER(_SZ), ctypes.POINTER(_SZ)]),
    "mf_trace_read": (_S, [_P, _SZ, ctypes.POINTER(TraceEvent), _SZ, ctypes.POINTER(_SZ)]),
    "mf_snapshot_json": (_S, [_P, ctypes.c_int, ctypes.c_char_p, _SZ, ctypes.POINTER(_SZ)]),
    "mf_allocator_options": (_P, [_P]),
    "mf_options_get": (_S, [_P, ctypes.c_char_p, ctypes.c_char_p, _SZ]),
    "memfit_plugin_allocator": (_P, []),
    "memfit_plugin_allocator_if_created": (_P, []),
    "memfit_plugin_validate": (ctypes.c_int, []),
    "memfit_plugin_last_error": (ctypes.c_char_p, []),
    "memfit_plugin_set_oom_thrower": (None, [_P]),
    "mf_backend_cuda_probe": (_S, []),
}

_lib: Optional[ctypes.CDLL] = None


def library_path() -> Path:
    path = find_library("MEMFIT_LIBRARY", "libmemfit.so", "allocator")
    if path is None:
        where = ", ".join(str(p) for p in _candidates("MEMFIT_LIBRARY", "libmemfit.so", "allocator"))
        raise MemfitError(
            f"memfit: libmemfit.so not found (looked in {where}). Build it with "
            "'bash scripts/test.sh' or 'cmake -S . -B build && cmake --build build' from the "
            "checkout, install the package with pip, or set MEMFIT_LIBRARY to its path."
        )
    return path


def lib() -> ctypes.CDLL:
    """The loaded libmemfit.so (loaded once, RTLD_GLOBAL so the torch adapter
    and PyTorch's own dlopen of the plugin share the same instance)."""
    global _lib
    if _lib is None:
        path = library_path()
        try:
            handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise MemfitError(f"memfit: cannot load {path}: {e}") from e
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def last_error() -> str:
    message = lib().mf_last_error()
    return message.decode(errors="replace") if message else ""


def check(status: int, what: str) -> None:
    """Raise MemfitError naming `what` and the C library's message when status is not MF_OK."""
    if status != MF_OK:
        cls = MemfitOutOfMemoryError if status == MF_ERR_OOM else MemfitError
        raise cls(f"memfit: {what}: {last_error()}")


def parse_size(text: "str | int", what: str = "size") -> int:
    """Bytes from an int or a string such as '2GiB', with the allocator's own parser."""
    if isinstance(text, bool):
        raise MemfitError(f"memfit: {what}: expected a size such as '2GiB', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise MemfitError(f"memfit: {what}: a size cannot be negative ({text})")
        return text
    if not isinstance(text, str):
        raise MemfitError(f"memfit: {what}: expected a size such as '2GiB', got {text!r}")
    if "\0" in text:  # C would stop reading there: "1GiB\0junk" is not 1 GiB
        raise MemfitError(f"memfit: {what}: {text!r} contains a NUL character")
    out = ctypes.c_uint64()
    if lib().mf_parse_size(text.encode(), ctypes.byref(out)) != MF_OK:
        raise MemfitError(f"memfit: {what}: {last_error()}")
    return out.value


def read_string(fn, *args) -> str:
    """Call a C function with the (buf, len, needed) convention and return the text."""
    needed = _SZ()
    fn(*args, None, 0, ctypes.byref(needed))
    buf = ctypes.create_string_buffer(max(needed.value, 1))
    fn(*args, buf, len(buf), ctypes.byref(needed))
    return buf.value.decode(errors="replace")


def load_json_file(path: "str | os.PathLike[str]", fmt: str, version: int, what: str) -> dict:
    """A memfit JSON file (profile, plan): read, parsed, its format and version checked."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise MemfitError(f"memfit: cannot read {what} {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise MemfitError(f"memfit: {path} is not JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise MemfitError(f"memfit: {path} is not a memfit {what} (format is not {fmt!r})")
    if data.get("version") != version:
        raise MemfitError(f"memfit: {path} has {what} version {data.get('version')}; this memfit reads {version}")
    return data


def option_keys() -> list[str]:
    n = lib().mf_options_count()
    return [lib().mf_options_key(i).decode() for i in range(n)]
