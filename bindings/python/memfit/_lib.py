"""ctypes over libmemfit.so: finding the library, the C prototypes and structs,
and the one exception type that carries the C library's message."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any, Optional, Tuple

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
    "mf_category_count": (ctypes.c_int, []),
    "mf_category_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_phase_count": (ctypes.c_int, []),
    "mf_phase_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_stats_counter_count": (ctypes.c_int, []),
    "mf_stats_counter_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_stats_event_count": (ctypes.c_int, []),
    "mf_stats_event_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mf_format_bytes": (ctypes.c_char_p, [ctypes.c_double, ctypes.c_char_p, _SZ]),
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
    "mf_options_selects_backend": (ctypes.c_int, [ctypes.c_int]),
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
    "mf_get_stats": (_S, [_P, ctypes.c_int, _P]),  # an mf_stats laid out by stats_struct()
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
    "memfit_plugin_configure": (ctypes.c_int, [ctypes.c_char_p]),
    "memfit_plugin_option": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, _SZ]),
    "memfit_plugin_last_error": (ctypes.c_char_p, []),
    "memfit_plugin_set_oom_thrower": (None, [_P]),
    "mf_backend_cuda_probe": (_S, []),
}

_lib: Optional[ctypes.CDLL] = None


def load_library(env: str, filename: str, subdir: str, prototypes: dict, missing: str,
                 mode: int = ctypes.RTLD_GLOBAL) -> ctypes.CDLL:
    """Every memfit library is loaded here, one way: found by find_library (the
    variable env, the package's _libs, the checkout's build), loaded (global by
    default: what links against it resolves to this instance) and given its C
    prototypes as {name: (restype, argtypes)}. `missing` says how to get it."""
    path = find_library(env, filename, subdir)
    if path is None:
        where = ", ".join(str(p) for p in _candidates(env, filename, subdir))
        raise MemfitError(f"memfit: {filename} not found (looked in {where}). {missing}")
    try:
        handle = ctypes.CDLL(str(path), mode=mode)
    except OSError as e:
        raise MemfitError(f"memfit: cannot load {path}: {e}") from e
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return handle


def library_path() -> Path:
    path = find_library("MEMFIT_LIBRARY", "libmemfit.so", "allocator")
    if path is None:
        lib()  # raises the full message
    return path  # type: ignore[return-value]


def lib() -> ctypes.CDLL:
    """The loaded libmemfit.so (loaded once, RTLD_GLOBAL so the torch adapter
    and PyTorch's own dlopen of the plugin share the same instance)."""
    global _lib
    if _lib is None:
        _lib = load_library("MEMFIT_LIBRARY", "libmemfit.so", "allocator", _PROTOTYPES,
                            "Build it with 'bash scripts/test.sh' or 'cmake -S . -B build && cmake --build build' "
                            "from the checkout, install the package with pip, or set MEMFIT_LIBRARY to its path.")
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


def _names(count, name) -> Tuple[str, ...]:
    return tuple(name(i).decode() for i in range(count()))


# ----------------------------------------------- names and layouts from C
# The category, phase and stats field names, and the mf_stats layout, are read
# from libmemfit.so (its enums and MF_STATS_COUNTERS / MF_STATS_EVENTS), never
# copied here: functions, so that importing memfit loads no library.


@functools.lru_cache(maxsize=None)
def categories() -> Tuple[str, ...]:
    """The category names, indexed by mf_category."""
    return _names(lib().mf_category_count, lib().mf_category_name)


@functools.lru_cache(maxsize=None)
def phases() -> Tuple[str, ...]:
    """The phase names, indexed by mf_phase."""
    return _names(lib().mf_phase_count, lib().mf_phase_name)


def _id(names: Tuple[str, ...], name: str, what: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise MemfitError(f"memfit: unknown {what} {name!r} (expected one of {', '.join(names)})") from None


def category_id(name: str) -> int:
    return _id(categories(), name, "category")


def phase_id(name: str) -> int:
    return _id(phases(), name, "phase")


@functools.lru_cache(maxsize=None)
def stats_fields() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(the mf_counter fields of mf_stats, its int64 event fields), in order."""
    return (_names(lib().mf_stats_counter_count, lib().mf_stats_counter_name),
            _names(lib().mf_stats_event_count, lib().mf_stats_event_name))


@functools.lru_cache(maxsize=None)
def stats_struct() -> type:
    """ctypes' mf_stats, laid out from the library's own field lists."""
    counters, events = stats_fields()
    fields = ([("struct_size", ctypes.c_uint32), ("version", ctypes.c_uint32)]
              + [(name, _Counter) for name in counters] + [(name, ctypes.c_int64) for name in events])
    return type("Stats", (ctypes.Structure,), {"_fields_": fields})


def format_bytes(n: float) -> str:
    """Bytes for people ("1.50 MiB"), by the C library's one formatter."""
    buf = ctypes.create_string_buffer(48)
    return lib().mf_format_bytes(float(n), buf, len(buf)).decode()


_LAZY = {
    "CATEGORIES": categories,
    "PHASES": phases,
    "CAT": lambda: {name: i for i, name in enumerate(categories())},
    "PHASE": lambda: {name: i for i, name in enumerate(phases())},
    "Stats": stats_struct,
}


def __getattr__(name: str) -> Any:
    """CATEGORIES, PHASES, CAT, PHASE and Stats for code that reads them as
    constants: computed from the library on first use."""
    if name in _LAZY:
        return _LAZY[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
