"""Run at interpreter start by memfit-autoload.pth. When PYTORCH_CUDA_ALLOC_CONF
or PYTORCH_ALLOC_CONF holds `backend:memfit`, take memfit's keys out of it before
torch can parse it, and install memfit as PyTorch's CUDA allocator as soon as
`import torch` completes, before any CUDA tensor can exist. Cheap when unused:
the .pth line looks at the two variables and imports nothing else."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any, Optional, Sequence


def _warn(message: str) -> None:
    sys.stderr.write(f"memfit: {message}\n")


def _install_after_torch() -> None:
    try:
        import torch

        from . import install as _install

        if not torch.cuda.is_available():
            _warn(
                "backend:memfit was asked for in PYTORCH_CUDA_ALLOC_CONF/PYTORCH_ALLOC_CONF, but PyTorch sees "
                "no CUDA device; PyTorch's allocator is unchanged"
            )
            return
        _install.install("cuda")
    except Exception as e:  # a failure here must not take the user's program down with it
        _warn(f"could not install memfit as PyTorch's CUDA allocator: {e}")


class _TorchWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when `torch` is being imported, wraps its loader so
    memfit installs right after torch's module body has run."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            pass
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module  # type: ignore[attr-defined]

        def exec_module(module: Any) -> None:
            original_exec(module)
            _install_after_torch()

        loader.exec_module = exec_module  # type: ignore[attr-defined]
        return spec


def run() -> None:
    if "memfit" not in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + os.environ.get("PYTORCH_ALLOC_CONF", ""):
        return
    from ._conf import take_memfit_conf

    if take_memfit_conf() is None:
        return
    if "torch" in sys.modules:  # too late to strip for torch, but install if CUDA is untouched
        _install_after_torch()
        return
    sys.meta_path.insert(0, _TorchWatcher())


try:
    run()
except Exception as e:  # never break interpreter start-up
    _warn(f"autoload failed: {e}")
