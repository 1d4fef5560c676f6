"""Run at interpreter start by memfit-autoload.pth, and by `import memfit`.

memfit is switched on for a process by `backend:memfit` in PYTORCH_CUDA_ALLOC_CONF
or PYTORCH_ALLOC_CONF, or by MEMFIT_INSTALL=cuda, the memfit-owned variable that
child processes inherit. Then, in every process: memfit's keys are taken out of
PyTorch's variables before torch can parse them (PyTorch rejects a backend and
keys it does not know) and moved to MEMFIT_CONF, MEMFIT_INSTALL=cuda is set for
the children, and memfit is installed as PyTorch's CUDA allocator as soon as
`import torch` completes, before any CUDA tensor can exist. Nothing here
initializes CUDA: the allocator is created at the first CUDA allocation.
Cheap when unused: the .pth line looks at three variables and imports nothing.

What happened is kept in STATE (`python3 -m memfit env` shows it)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any, Dict, Optional, Sequence

INTENT_VAR = "MEMFIT_INSTALL"  # the same name as install.INTENT_VAR (that module imports torch)

# asked_by: the variable that switched memfit on (None: off); conf: memfit's
# options taken from PyTorch's variables; status: "off", "armed" (waiting for
# `import torch`), "installed" or "failed"; reason: why it failed, or a note.
STATE: Dict[str, Optional[str]] = {"asked_by": None, "conf": "", "status": "off", "reason": None}
_ran = False


def _warn(message: str) -> None:
    sys.stderr.write(f"memfit: {message}\n")


def _install_after_torch() -> None:
    try:
        import torch

        from . import install as _install

        # Not torch.cuda.is_available(): it initializes CUDA (see install.py).
        if not torch.cuda._is_compiled():
            STATE.update(status="failed", reason=f"this PyTorch ({torch.__version__}) is built without CUDA")
            _warn(
                f"backend:memfit was asked for ({STATE['asked_by']}), but this PyTorch ({torch.__version__}) is built "
                "without CUDA; PyTorch's allocator is unchanged"
            )
            return
        _install.install("cuda")
        STATE.update(status="installed", reason=None)
    except Exception as e:  # a failure here must not take the user's program down with it
        STATE.update(status="failed", reason=str(e))
        _warn(f"could not install memfit as PyTorch's CUDA allocator: {e}")


class _TorchWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when `torch` is being imported, wraps its loader so
    memfit installs right after torch's module body has run."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module  # type: ignore[attr-defined]

        def exec_module(module: Any) -> None:
            original_exec(module)
            _install_after_torch()

        loader.exec_module = exec_module  # type: ignore[attr-defined]
        return spec


def _bad_options(conf: str) -> Optional[str]:
    """memfit's own parser's message for conf, or None when it parses."""
    from . import _lib

    try:
        lib = _lib.lib()
    except Exception as e:  # no library: install() will say so
        return None if "not found" in str(e) else str(e)
    options = lib.mf_options_new()
    if not options:
        return None
    try:
        if lib.mf_options_parse(options, conf.encode()) != _lib.MF_OK:
            return f"bad memfit option: {_lib.last_error()}"
        return None
    finally:
        lib.mf_options_free(options)


def asked(environ: Optional[Dict[str, str]] = None) -> bool:
    """Whether a variable switches memfit on (the .pth line's test, spelt out)."""
    env = os.environ if environ is None else environ
    return ("memfit" in (env.get("PYTORCH_CUDA_ALLOC_CONF", "") + env.get("PYTORCH_ALLOC_CONF", "")).lower()
            or bool(env.get(INTENT_VAR)))


def run() -> None:
    """Once per process: strip, arm, and install after `import torch`."""
    global _ran
    if _ran or not asked():
        return
    _ran = True
    from ._conf import ENV_VARS, asks_for_memfit, drop_backend_memfit, take_memfit_conf
    from ._lib import MemfitError

    asked_by = next((name for name in ENV_VARS if asks_for_memfit(os.environ.get(name, ""))), None)
    if asked_by is None and not os.environ.get(INTENT_VAR):
        return  # "memfit" appeared in a variable, but not as its backend
    try:
        conf = take_memfit_conf()  # memfit's keys come from libmemfit.so's option table
    except MemfitError as e:  # no library: its keys cannot be told from PyTorch's
        drop_backend_memfit()
        STATE.update(asked_by=asked_by, status="failed", reason=str(e))
        _warn(f"{e}; memfit stays off, and the rest of {asked_by} is left to PyTorch")
        return
    if conf:
        problem = _bad_options(conf)
        if problem:  # now, not at the first CUDA allocation
            STATE.update(asked_by=asked_by, conf=conf, status="failed", reason=problem)
            _warn(f"{problem} (from {asked_by}); memfit stays off and PyTorch's allocator is unchanged")
            return
    if conf is None:
        asked_by, conf = INTENT_VAR, ""
        intent = os.environ.get(INTENT_VAR, "")
        if intent != "cuda":
            STATE.update(asked_by=INTENT_VAR, status="failed", reason=f"{INTENT_VAR}={intent!r}: expected 'cuda'")
            _warn(f"{INTENT_VAR}={intent!r} is not understood (expected 'cuda'); memfit stays off")
            return
    os.environ[INTENT_VAR] = "cuda"  # children: torchrun workers, mp.spawn, Ray, DataLoader (spawn)
    STATE.update(asked_by=asked_by, conf=conf, status="armed", reason=None)
    if "torch" in sys.modules:  # too late to strip for torch's import, but install if CUDA is untouched
        _install_after_torch()
        return
    sys.meta_path.insert(0, _TorchWatcher())


def run_safely() -> None:
    try:
        run()
    except Exception as e:  # never break interpreter start-up or `import memfit`
        STATE.update(status="failed", reason=f"autoload failed: {e}")
        _warn(f"autoload failed: {e}")


run_safely()
