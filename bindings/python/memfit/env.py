"""`python3 -m memfit env`: what memfit does in this process and why (switched on
or not, by which variable, with which options, from which library, and what
torch looks like). It only reads state: torch is imported only when it already
is or when asked (importing torch is what runs memfit's autoload installation),
and memfit._autoload is never imported here (importing it runs it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import _lib
from ._conf import ENV_VARS, asks_for_memfit

# memfit's own switch, inherited by child processes: memfit is PyTorch's CUDA allocator here
INSTALL_VAR = "MEMFIT_INSTALL"
_STATUS_TEXT = {
    "off": "memfit is not PyTorch's allocator in this process",
    "armed": "memfit becomes PyTorch's CUDA allocator when torch is imported",
    "installed": "memfit is PyTorch's allocator",
    "failed": "memfit was asked for but could not be installed",
}


def asked_in_environment(environ: Optional[Dict[str, str]] = None) -> List[str]:
    """The variables that ask for memfit now: MEMFIT_INSTALL=cuda, or backend:memfit in PyTorch's."""
    env = os.environ if environ is None else environ
    names = [INSTALL_VAR] if env.get(INSTALL_VAR, "").strip() == "cuda" else []
    names += [name for name in ENV_VARS if env.get(name) and asks_for_memfit(env[name])]
    return names


def _autoload_state() -> Optional[Dict[str, Any]]:
    """memfit._autoload.STATE when the autoload ran in this process; {} for an
    autoload without STATE; None when it did not run."""
    module = sys.modules.get(f"{__package__}._autoload")
    if module is None:
        return None
    state = getattr(module, "STATE", None)
    return dict(state) if isinstance(state, dict) else {}


def library_info() -> Dict[str, Any]:
    """Where libmemfit.so comes from: its path and which rule of _lib.find_library found it."""
    loaded = _lib._lib is not None
    error = None
    if loaded:
        path: Optional[Path] = Path(_lib._lib._name).resolve()  # what this process runs, whatever the variables say now
    else:
        try:
            path = _lib.library_path()
        except _lib.MemfitError as e:
            path, error = None, str(e)
    return {"library": str(path) if path else None, "library_source": _library_source(path),
            "library_loaded": loaded, "library_error": error}


def _library_source(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    explicit = os.environ.get("MEMFIT_LIBRARY")
    if explicit and Path(explicit).resolve() == path:
        return "MEMFIT_LIBRARY"
    if path == (_lib._PACKAGE_DIR / "_libs" / path.name).resolve():
        return "package"
    build_dir = os.environ.get("MEMFIT_BUILD_DIR")
    if build_dir and Path(build_dir).resolve() in path.parents:
        return "MEMFIT_BUILD_DIR"
    if any((_lib._REPO_DIR / d).resolve() in path.parents for d in _lib._BUILD_DIRS):
        return "checkout"
    return "other"


def torch_info(import_torch: bool = False) -> Dict[str, Any]:
    """torch's version, whether it is imported, built with CUDA, and whether CUDA is initialized."""
    info: Dict[str, Any] = {"imported": "torch" in sys.modules, "imported_by_env": False, "version": None,
                            "cuda_built": None, "cuda_initialized": False}
    if import_torch and not info["imported"]:
        try:
            import torch  # noqa: F401  (runs memfit's autoload installation when it is armed)
        except Exception as e:  # a broken torch is something to report, not a crash of `memfit env`
            info["import_error"] = f"{type(e).__name__}: {e}"
        info["imported_by_env"] = "torch" in sys.modules
        info["imported"] = "torch" in sys.modules
    torch = sys.modules.get("torch") if info["imported"] else None
    if torch is None:
        try:
            from importlib.metadata import PackageNotFoundError, version

            info["version"] = version("torch")
        except PackageNotFoundError:
            pass
        return info
    info["version"] = getattr(torch, "__version__", None)
    info["cuda_built"] = bool(getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None))
    info["cuda_initialized"] = bool(torch.cuda.is_initialized())
    return info


def describe(import_torch: bool = False) -> Dict[str, Any]:
    """Everything `memfit env --json` prints, as a dict."""
    torch = torch_info(import_torch)  # first: importing torch may install memfit
    from .install import current

    state = _autoload_state()
    status = (state or {}).get("status") or "off"
    reason = (state or {}).get("reason")
    asked_by = (state or {}).get("asked_by")
    asking = asked_in_environment()
    alloc = current()
    backend = None
    capacity = None
    if alloc is not None:
        backend = "cuda" if alloc.device == "cuda" else "host"
        from .torch_stats import capacity as capacity_of  # reads no handle the plugin has not created yet

        capacity = capacity_of(alloc, alloc.index)
        if status != "installed":  # not the autoload's doing: a direct memfit.install()
            note = f"memfit.install(device={alloc.device!r}) was called in this process"
            reason = f"{note}; the autoload's attempt: {reason}" if reason else note
        status = "installed"
    elif status in ("armed", "installed"):
        backend = "cuda"
    if reason is None and status == "off" and asking:
        # The autoload runs once, at interpreter start (memfit-autoload.pth) or at the
        # first `import memfit`: a variable set later in the process is not seen.
        names = " and ".join(asking)
        reason = f"{names} ask{'s' if len(asking) == 1 else ''} for memfit, but "
        reason += ("memfit's autoload did not run in this process" if state is None else
                   "memfit's autoload reports no state (an older memfit)" if not state else
                   "memfit's autoload ran before that was set (it runs once: at interpreter start from "
                   "memfit-autoload.pth, or at the first `import memfit`)")
    routes = sys.modules.get(f"{__package__}.torch_stats")
    guard = sys.modules.get(f"{__package__}.cudnn_guard")
    return {
        "active": status in ("armed", "installed"),
        "status": status,
        "reason": reason,
        "asked_by": asked_by,
        "asked_in_environment": asking,
        "backend": backend,
        "capacity": capacity,
        "options": {
            "memfit": (state or {}).get("conf"),
            "MEMFIT_CONF": os.environ.get("MEMFIT_CONF"),
            **{name: os.environ.get(name) for name in ENV_VARS},
            INSTALL_VAR: os.environ.get(INSTALL_VAR),
        },
        **library_info(),
        "torch_functions_routed": bool(routes is not None and routes.routed() is not None),
        "cudnn_benchmark_guarded": bool(guard is not None and guard.state()["guarded"]),
        "torch": torch,
    }


def format_human(info: Dict[str, Any]) -> str:
    """A few aligned lines."""
    def text(value: Any) -> str:
        return "-" if value is None else str(value)

    rows = [
        ("active", "yes" if info["active"] else "no"),
        ("status", f"{info['status']}: {_STATUS_TEXT.get(info['status'], '')}"),
        ("asked by", text(info["asked_by"])),
        ("reason", text(info["reason"])),
        ("backend", text(info["backend"])),
    ]
    if info.get("capacity"):  # not memfit.reporting.human: reporting imports torch
        rows.append(("capacity", f"{info['capacity']} bytes ({info['capacity'] / (1 << 30):.2f} GiB)"))
    options = info["options"]
    rows.append(("memfit options", text(options.get("memfit") or None)))
    rows += [(name, "(unset)" if value is None else value) for name, value in options.items() if name != "memfit"]
    if info["library"]:
        rows.append(("library", f"{info['library']} ({info['library_source']}"
                                f"{', loaded' if info['library_loaded'] else ''})"))
    else:
        rows.append(("library", f"not found: {info['library_error']}"))
    t = info["torch"]
    if t["imported"]:
        torch_text = (f"{text(t['version'])}, imported, CUDA built: {'yes' if t['cuda_built'] else 'no'}, "
                      f"CUDA initialized: {'yes' if t['cuda_initialized'] else 'no'}")
    else:
        torch_text = f"{text(t['version'])}, not imported (--import-torch imports it)"
    if t.get("import_error"):
        torch_text += f"; import failed: {t['import_error']}"
    rows.append(("torch", torch_text))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(["memfit env"] + [f"  {label:<{width}}{value}" for label, value in rows])


def run(as_json: bool = False, import_torch: bool = False) -> int:
    info = describe(import_torch)
    print(json.dumps(info, indent=1) if as_json else format_human(info))
    return 0
