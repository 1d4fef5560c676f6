"""Putting memfit under PyTorch: the CUDA allocator through CUDAPluggableAllocator,
the CPU allocator through the C++ adapter (libmemfit_torch.so), and the one
allocator the rest of the package reports on (`current()`)."""

from __future__ import annotations

import ctypes
import os
from typing import Dict, List, Optional

from . import _lib
from ._lib import MemfitError
from .allocator import Allocator

_current: Optional[Allocator] = None
_kept_alive: List[Allocator] = []  # allocators that still own tensors after a re-install
_adapter: Optional[ctypes.CDLL] = None
# With segments (vmm:off), host memory has no 2 MiB pages to mirror: segments sized
# to the request (64 KiB granularity) and every remainder split, so allocated bytes
# follow requested bytes linearly in the batch size (the planner extrapolates them).
# With page-mapped pools (the default) the granule is the host page and remainders
# are always split; these keys then change nothing.
CPU_DEFAULTS: Dict[str, object] = {"large_split": 0, "segment_round": "64KiB", "large_segment": 0}


def current() -> Optional[Allocator]:
    """The allocator memfit.install() put under PyTorch, or None."""
    return _current


def options_conf(options: Dict[str, object], what: str = "memfit.install") -> str:
    """'key:value,...' from keyword options, each key checked against the allocator's table."""
    known = _lib.option_keys()
    parts = []
    for key, value in options.items():
        if key not in known:
            raise MemfitError(f"{what}: unknown option {key!r} (memfit's options: {', '.join(known)})")
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        if any(c in text for c in ",:\0"):
            raise MemfitError(f"{what}: option {key}={text!r} cannot contain ',', ':' or a NUL character")
        parts.append(f"{key}:{text}")
    return ",".join(parts)


def install(device: str = "cuda", **options: object) -> Allocator:
    """Route PyTorch's allocations on `device` ("cuda" or "cpu") through memfit.

    Options are the allocator's (capacity="2GiB", max_split_size=..., ...; see
    allocator/README.md), applied after those in MEMFIT_CONF. On CUDA, call it
    before the first CUDA tensor: PyTorch cannot change its allocator after that.
    On CPU, every later CPU tensor goes through memfit's host backend, and going
    past `capacity` raises torch.OutOfMemoryError with memfit's report.
    """
    if device not in ("cuda", "cpu"):
        raise MemfitError(f"memfit.install: device must be 'cuda' or 'cpu', not {device!r}")
    if "backend" in options:
        raise MemfitError("memfit.install: 'backend' is chosen by the device (cuda: cuda, cpu: host)")
    conf = options_conf(options)
    if device == "cpu":
        return _install_cpu(conf)
    return _install_cuda(conf)


def uninstall() -> None:
    """Give PyTorch its own CPU allocator back (CUDA: not possible once installed)."""
    global _current
    if _current is None:
        return
    if _current.device == "cuda":
        raise MemfitError("memfit.uninstall: PyTorch cannot change its CUDA allocator once it has been used")
    adapter = _load_adapter()
    if adapter.memfit_torch_cpu_uninstall() != 0:
        raise MemfitError(f"memfit.uninstall: {adapter.memfit_torch_last_error().decode()}")
    _current = None


# ------------------------------------------------------------------- CPU


def adapter_path() -> Optional[str]:
    path = _lib.find_library("MEMFIT_TORCH_LIBRARY", "libmemfit_torch.so", "bindings/torch")
    return str(path) if path else None


_ADAPTER_PROTOTYPES = {
    "memfit_torch_built_for": (ctypes.c_char_p, []),
    "memfit_torch_last_error": (ctypes.c_char_p, []),
    "memfit_torch_cpu_install": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "memfit_torch_cpu_uninstall": (ctypes.c_int, []),
}


def _load_adapter() -> ctypes.CDLL:
    global _adapter
    if _adapter is not None:
        return _adapter
    import torch

    _lib.lib()  # libmemfit.so first, RTLD_GLOBAL: the adapter links against it
    adapter = _lib.load_library(
        "MEMFIT_TORCH_LIBRARY", "libmemfit_torch.so", "bindings/torch", _ADAPTER_PROTOTYPES,
        "The CPU allocator needs it; it is built when CMake finds PyTorch (python3 -c 'import torch' must work "
        "at configure time): rebuild, or set MEMFIT_TORCH_LIBRARY to its path.")
    path = adapter_path()
    built_for = adapter.memfit_torch_built_for().decode()
    running = torch.__version__
    if built_for != running:
        raise MemfitError(
            f"memfit: {path} was built against PyTorch {built_for} but {running} is running; "
            "rebuild memfit (cmake --build) with this PyTorch"
        )
    _adapter = adapter
    return adapter


def _install_cpu(conf: str) -> Allocator:
    global _current
    adapter = _load_adapter()
    # memfit's CPU defaults, then MEMFIT_CONF (as the CUDA plugin reads it), then the caller's options.
    env = os.environ.get("MEMFIT_CONF", "").strip().strip(",")
    parts = ["backend:host", options_conf(CPU_DEFAULTS)] + [c for c in (env, conf) if c]
    alloc = Allocator.create(",".join(parts), "cpu")
    alloc._installed = True  # type: ignore[attr-defined]  # Allocator.close refuses from here on
    if adapter.memfit_torch_cpu_install(alloc.handle, 0) != 0:
        raise MemfitError(f"memfit.install(device='cpu'): {adapter.memfit_torch_last_error().decode()}")
    if _current is not None:
        _kept_alive.append(_current)  # its tensors still free through it
    _current = alloc
    return alloc


# ------------------------------------------------------------------ CUDA

# The memfit-owned variable that says "memfit is PyTorch's CUDA allocator here".
# Child processes inherit it (torchrun workers, mp.spawn, Ray, DataLoader workers
# started with spawn), and memfit-autoload.pth installs memfit in each of them.
INTENT_VAR = "MEMFIT_INSTALL"


class PluginAllocator(Allocator):
    """The CUDA plugin's allocator, created by the plugin at PyTorch's first CUDA
    allocation, not at install: creating it initializes CUDA (cuInit), after which
    CUDA_VISIBLE_DEVICES is fixed and forked children cannot use CUDA. Any use of
    `handle` before that creates it."""

    def __init__(self) -> None:  # pylint: disable=super-init-not-called
        self.device = "cuda"
        self.index = 0
        self._owned = False
        self._handle: Optional[ctypes.c_void_p] = None

    @property
    def created(self) -> bool:
        return self._handle is not None or bool(_lib.lib().memfit_plugin_allocator_if_created())

    @property  # type: ignore[override]
    def handle(self) -> ctypes.c_void_p:
        if self._handle is None:
            raw = _lib.lib().memfit_plugin_allocator()
            if not raw:
                raise MemfitError(f"memfit: the CUDA allocator could not be created: {plugin_error()}")
            self._handle = ctypes.c_void_p(raw)
        return self._handle

    def stats(self, device: Optional[int] = None) -> Dict[str, object]:
        """Zeros until the first CUDA allocation (reading them creates nothing)."""
        if self.created:
            return super().stats(device)
        counters, events = _lib.stats_fields()
        out: Dict[str, object] = {name: {"current": 0, "peak": 0, "total": 0} for name in counters}
        out.update({name: 0 for name in events})
        return out


def plugin_error() -> str:
    message = _lib.lib().memfit_plugin_last_error()
    return message.decode(errors="replace") if message else _lib.last_error()


def _oom_thrower() -> Optional[int]:
    """libmemfit_torch.so's memfit_torch_throw_oom when it matches the running
    PyTorch, so that the plugin's OOMs are torch.OutOfMemoryError; else None
    (they stay RuntimeErrors starting "CUDA out of memory.", which
    memfit.is_out_of_memory recognizes)."""
    try:
        adapter = _load_adapter()
    except MemfitError:
        return None
    return ctypes.cast(adapter.memfit_torch_throw_oom, ctypes.c_void_p).value


def _install_cuda(conf: str) -> Allocator:
    global _current
    import torch

    if _current is not None and _current.device == "cuda":
        if conf:
            raise MemfitError("memfit.install: memfit is already PyTorch's CUDA allocator; options can no longer change")
        return _current
    # Not torch.cuda.is_available(): it initializes CUDA, which would fix
    # CUDA_VISIBLE_DEVICES and keep forked children from using CUDA.
    if not torch.cuda._is_compiled():
        raise MemfitError(f"memfit.install(device='cuda'): this PyTorch ({torch.__version__}) is built without CUDA")
    if torch.cuda.is_initialized():
        raise MemfitError(
            "memfit.install: CUDA is already initialized, and PyTorch cannot change its allocator now. "
            "Import memfit and call memfit.install() before the first CUDA tensor, or set "
            "PYTORCH_CUDA_ALLOC_CONF=backend:memfit before starting Python."
        )
    lib = _lib.lib()
    # The plugin creates its allocator at the first allocation, from MEMFIT_CONF
    # and then these options, given to it here (the environment is left alone).
    if lib.memfit_plugin_configure(conf.encode()) != 0:
        raise MemfitError(f"memfit.install(device='cuda'): {plugin_error()}; PyTorch's allocator is unchanged")
    # Validate before the swap: once PyTorch has memfit's entry points, a failure
    # to create the allocator would make every CUDA allocation of the process throw.
    if lib.memfit_plugin_validate() != 0:
        error = plugin_error()
        lib.memfit_plugin_configure(None)  # as it was: no options of this failed call stay
        raise MemfitError(f"memfit.install(device='cuda'): {error}; PyTorch's allocator is unchanged")
    path = str(_lib.library_path())
    pluggable = torch.cuda.memory.CUDAPluggableAllocator(path, "memfit_malloc", "memfit_free")
    hooks = pluggable._allocator

    def address(name: str) -> int:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value  # type: ignore[return-value]

    hooks.set_reset_fn(address("memfit_empty_cache"))
    if hasattr(hooks, "set_record_stream_fn"):
        hooks.set_record_stream_fn(address("memfit_record_stream"))
    if hasattr(hooks, "set_memory_fraction_fn"):
        hooks.set_memory_fraction_fn(address("memfit_set_memory_fraction"))
    thrower = _oom_thrower()
    lib.memfit_plugin_set_oom_thrower(thrower)
    torch.cuda.memory.change_current_allocator(pluggable)
    os.environ[INTENT_VAR] = "cuda"
    alloc = PluginAllocator()
    _route_cuda(alloc)
    _current = alloc
    return alloc


def _route_cuda(alloc: Allocator) -> None:
    """PyTorch's memory APIs that raise or lie under a pluggable allocator answer
    from memfit, and cudnn.benchmark (which needs the allocator's cacheInfo) stays off."""
    from .torch_stats import route_cuda_stats

    route_cuda_stats(alloc)
    try:
        from .cudnn_guard import guard_cudnn_benchmark
    except ImportError:  # pragma: no cover - the guard ships with the package
        return
    guard_cudnn_benchmark()
