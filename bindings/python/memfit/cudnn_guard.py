"""Keeping torch.backends.cudnn.benchmark off under memfit's CUDA allocator.

cuDNN's benchmark mode sizes its workspace from the caching allocator's largest
free block (CUDACachingAllocator::cacheInfo, in ATen's cudnn convolution code),
and PyTorch's CUDAPluggableAllocator has no hook for cacheInfo: it raises
"CUDAPluggableAllocator does not yet support cacheInfo" at the first convolution.
guard_cudnn_benchmark() makes every way of switching benchmark on leave it off,
with one line on stderr; cuDNN then picks its algorithms by heuristics."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional

MESSAGE = (
    "memfit: torch.backends.cudnn.benchmark=True is not supported under memfit's allocator "
    "(cuDNN's benchmark asks the allocator for cacheInfo, which PyTorch's pluggable allocator "
    "does not have); left off"
)

_original_setter: Optional[Callable[[Any], None]] = None  # torch._C._set_cudnn_benchmark
_prop: Any = None  # torch.backends.cudnn's `benchmark` descriptor
_prop_setter: Optional[Callable[[Any], None]] = None
_warned = False


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(MESSAGE + "\n")


def _guarded_set_benchmark(value: Any) -> None:
    if _original_setter is None:  # unguarded while someone kept this function: behave as PyTorch's
        import torch

        torch._C._set_cudnn_benchmark(value)
        return
    if value:
        _warn_once()
        value = False
    _original_setter(value)


def guard_cudnn_benchmark() -> None:
    """Keep cuDNN's benchmark mode off from now on (idempotent).

    Covers `torch.backends.cudnn.benchmark = True`, `torch.backends.cudnn.flags(benchmark=True)`
    / `set_flags(_benchmark=True)` and `torch._C._set_cudnn_benchmark(True)`: all set it
    through torch._C._set_cudnn_benchmark, which the module's property holds its own
    reference to. If benchmark is already on, it is turned off with the same line."""
    global _original_setter, _prop, _prop_setter
    import torch
    import torch.backends.cudnn as cudnn

    if _original_setter is None:
        _original_setter = torch._C._set_cudnn_benchmark
        torch._C._set_cudnn_benchmark = _guarded_set_benchmark
        # torch.backends.cudnn is a module object whose class carries `benchmark` as a
        # descriptor holding the setter it was built with; flags()/set_flags look
        # torch._C._set_cudnn_benchmark up at each call.
        prop = type(cudnn).__dict__.get("benchmark")
        if prop is not None and hasattr(prop, "setter"):
            _prop, _prop_setter = prop, prop.setter
            prop.setter = _guarded_set_benchmark
    if torch._C._get_cudnn_benchmark():
        _guarded_set_benchmark(True)


def unguard_cudnn_benchmark() -> None:
    """Give PyTorch its own setters back (tests); the one-line warning may print again."""
    global _original_setter, _prop, _prop_setter, _warned
    if _original_setter is None:
        return
    import torch

    torch._C._set_cudnn_benchmark = _original_setter
    if _prop is not None:
        _prop.setter = _prop_setter
    _original_setter, _prop, _prop_setter, _warned = None, None, None, False


def state() -> Dict[str, bool]:
    """Whether the guard is on and whether it has printed its line (for `memfit env` and tests)."""
    return {"guarded": _original_setter is not None, "warned": _warned}
