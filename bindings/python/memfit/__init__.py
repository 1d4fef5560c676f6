"""memfit: GPU memory for PyTorch training, measured by layer and category, and
planned before the job runs.

    import memfit
    memfit.install(device="cuda")            # or PYTORCH_CUDA_ALLOC_CONF=backend:memfit
    tracker = memfit.track(model, optimizer)  # tags by layer and category
    prof = memfit.profile(job, device="cpu", batch_sizes=(2, 4))

Importing memfit does not import torch (the autoload hook imports memfit at
interpreter start); the torch-facing parts load on first use. Importing memfit
before torch also does what the autoload hook does, for interpreters that skip
.pth files (python -S, embedded, a checkout on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

from . import _autoload  # noqa: F401  (switched on by a variable: strips it before torch reads it)
from ._lib import MemfitError, MemfitOutOfMemoryError, NothingFitsError, is_out_of_memory, parse_size
from .allocator import Allocator, tag
from .install import current, install, uninstall

# Eager, not in _LAZY: the function shares its module's name, and a lazy import
# of the module (`import memfit.snapshot`, as torch_stats.py does) would leave
# memfit.snapshot bound to the module. The module does not import torch.
from .snapshot import snapshot


_LAZY = {
    "Job": ("job", "Job"),
    "load_job": ("job", "load_job"),
    "track": ("tracking", "track"),
    "Tracker": ("tracking", "Tracker"),
    "profile": ("profiling", "profile"),
    "Profile": ("documents", "Profile"),
    "plan": ("documents", "plan"),
    "Plan": ("documents", "Plan"),
    "apply": ("planning", "apply"),
    "unapply": ("planning", "unapply"),
    "needs_grad_scaler": ("planning", "needs_grad_scaler"),
    "find_units": ("blocks", "find_units"),
    "verify": ("planning", "verify"),
    "report": ("reporting", "report"),
    "measure_loader": ("loader", "measure_loader"),
    "add_loader_check": ("compute", "add_loader_check"),
}

__all__ = [
    "Allocator",
    "MemfitError",
    "MemfitOutOfMemoryError",
    "NothingFitsError",
    "current",
    "install",
    "is_out_of_memory",
    "parse_size",
    "snapshot",
    "tag",
    "uninstall",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one version: CMake's project(VERSION), compiled into libmemfit.so
        from ._lib import lib

        return lib().mf_version().decode()
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memfit' has no attribute {name!r}")
