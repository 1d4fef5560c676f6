# conftest.py — shared set-up for the memfit Python tests.
#
# * The package is imported from the checkout (bindings/python goes first on
#   sys.path), and MEMFIT_BUILD_DIR defaults to <repo>/build, where memfit's
#   _lib.py and test_torch_adapter.py look for libmemfit.so and libmemfit_torch.so.
# * Markers: needs_lib (libmemfit.so), needs_adapter (libmemfit_torch.so built
#   for the running PyTorch). A test that uses the `memfit_cpu` fixture needs the
#   adapter implicitly. Missing pieces skip those tests with the reason.
# * memfit.install(device="cpu") makes memfit the process-wide CPU allocator.
#   `memfit_cpu` installs it once per process (again only if something
#   uninstalled it). test_torch_adapter.py (not ours) drives the adapter directly
#   and requires that nothing is installed, so memfit is uninstalled before its
#   tests; tensors made under memfit still free into it afterwards.
# * Subprocess helpers: `python_env()` and `start_python()` / `run_python()` run
#   the same interpreter with the checkout's package and libraries.
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PYDIR = REPO / "bindings" / "python"
if str(PYDIR) not in sys.path:
    sys.path.insert(0, str(PYDIR))
os.environ.setdefault("MEMFIT_BUILD_DIR", str(REPO / "build"))
BUILD = Path(os.environ["MEMFIT_BUILD_DIR"])

# Variables a child process must not inherit from whoever runs pytest.
_SCRUBBED = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMFIT_CONF", "MEMFIT_INSTALL")


@functools.lru_cache(maxsize=None)
def torch_problem() -> Optional[str]:
    try:
        import torch  # noqa: F401
    except Exception as e:  # pragma: no cover - torch is installed here
        return f"PyTorch is not importable ({type(e).__name__}: {e})"
    return None


@functools.lru_cache(maxsize=None)
def lib_problem() -> Optional[str]:
    from memfit import _lib

    path = _lib.find_library("MEMFIT_LIBRARY", "libmemfit.so", "allocator")
    if path is None:
        return (f"libmemfit.so is not built (MEMFIT_BUILD_DIR={BUILD}): build it with "
                "'cmake -S . -B build && cmake --build build', or set MEMFIT_BUILD_DIR")
    return None


@functools.lru_cache(maxsize=None)
def adapter_problem() -> Optional[str]:
    """Why memfit cannot be PyTorch's CPU allocator here, or None."""
    problem = torch_problem() or lib_problem()
    if problem:
        return problem
    import ctypes

    import torch
    from memfit import _lib
    from memfit.install import adapter_path

    path = adapter_path()
    if path is None:
        return (f"libmemfit_torch.so is not built (MEMFIT_BUILD_DIR={BUILD}; it is built when CMake finds "
                "PyTorch, and not with MEMFIT_SANITIZE): the tests that install memfit as PyTorch's CPU "
                "allocator cannot run")
    _lib.lib()  # the adapter links against libmemfit.so
    adapter = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    adapter.memfit_torch_built_for.restype = ctypes.c_char_p
    built_for = adapter.memfit_torch_built_for().decode()
    if built_for != torch.__version__:  # as memfit.install checks it
        return f"{path} was built for PyTorch {built_for}, but {torch.__version__} is running: rebuild it"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_lib: needs libmemfit.so")
    config.addinivalue_line("markers", "needs_adapter: needs libmemfit_torch.so built for this PyTorch")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("needs_adapter") or "memfit_cpu" in getattr(item, "fixturenames", ()):
            problem = adapter_problem()
        elif item.get_closest_marker("needs_lib"):
            problem = lib_problem()
        else:
            continue
        if problem:
            item.add_marker(pytest.mark.skip(reason=problem))


def _release_cpu_install() -> None:
    install = sys.modules.get("memfit.install")
    if install is None:
        return
    alloc = install.current()
    if alloc is not None and alloc.device == "cpu":
        import gc

        gc.collect()
        install.uninstall()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # test_torch_adapter.py installs the adapter by hand and asserts nothing else has.
    if Path(str(item.fspath)).name == "test_torch_adapter.py":
        _release_cpu_install()


@pytest.fixture(scope="module")
def memfit_cpu():
    """memfit as PyTorch's CPU allocator (one install per process)."""
    import memfit

    alloc = memfit.current()
    if alloc is None:
        alloc = memfit.install(device="cpu")
    assert alloc.device == "cpu", f"memfit is installed for {alloc.device}, not cpu"
    return alloc


# ------------------------------------------------------------- subprocesses


def python_env(**extra: str) -> Dict[str, str]:
    """The environment for a child Python: the checkout's package and libraries,
    none of the parent's allocator settings."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYDIR), os.environ.get("PYTHONPATH", "")) if p)
    env["MEMFIT_BUILD_DIR"] = str(BUILD)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def start_python(args: List[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[os.PathLike] = None) -> subprocess.Popen:
    """Start `python3 ARGS` (this interpreter); finish with finish_python()."""
    return subprocess.Popen([sys.executable, *args], env=env or python_env(), cwd=cwd or REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_python(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(args: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[os.PathLike] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    return finish_python(start_python(args, env, cwd), timeout)


def describe(result: subprocess.CompletedProcess) -> str:
    """A failure message showing what a child printed."""
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_memfit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python3 -m memfit ARGS` in its own process, as a user runs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "bindings" / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MEMFIT_BUILD_DIR", str(REPO / "build"))
    return subprocess.run([sys.executable, "-m", "memfit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# Progress lines memfit prints on stderr before an error (not part of the error).
PROGRESS = ("memfit: [", "memfit: profiling ", "memfit: planning ", "memfit: verify: ", "memfit: not planned: ")


def error_lines(stderr: str):
    """stderr without argparse's usage block (a 'usage:' line and its indented
    continuation) and without progress lines (what ran before the error)."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(PROGRESS)]
    if lines and lines[0].startswith("usage:"):
        i = 1
        while i < len(lines) and lines[i].startswith(" "):
            i += 1
        lines = lines[i:]
    return lines
