# test_install_cuda.py — memfit.install(device="cuda") on a CPU-only PyTorch,
# with PyTorch's CUDA-only pieces replaced by recording fakes (in a child
# process: the plugin's allocator and torch's patched functions are
# process-wide). It checks the order of what install does — options validated
# before PyTorch's allocator is swapped, nothing that initializes CUDA, the
# allocator created at the first allocation, not at install — and that the
# OOM thrower of libmemfit_torch.so is registered.
from __future__ import annotations

import json
import textwrap

import pytest

from conftest import describe, python_env, run_python

pytestmark = [pytest.mark.needs_lib, pytest.mark.needs_adapter]

_CHILD = textwrap.dedent("""
    import json, os, sys
    import torch, torch.cuda, torch.cuda.memory as mem
    calls = []
    # What a CUDA build of PyTorch would offer; none of it initializes CUDA.
    torch.cuda._is_compiled = lambda: True
    torch.cuda.is_initialized = lambda: False
    torch.cuda.is_available = lambda: calls.append("is_available") or True  # initializes CUDA: must not be called
    class Hooks:
        def set_reset_fn(self, fn): calls.append("reset_fn")
        def set_record_stream_fn(self, fn): calls.append("record_stream_fn")
        def set_memory_fraction_fn(self, fn): calls.append("memory_fraction_fn")
    class Pluggable:
        def __init__(self, path, alloc, free):
            calls.append(("pluggable", alloc, free))
            self._allocator = Hooks()
    mem.CUDAPluggableAllocator = Pluggable
    mem.change_current_allocator = lambda a: calls.append("swap")
    import memfit, memfit._lib as L
    out = {}
    try:
        memfit.install("cuda", **json.loads(sys.argv[1]))
        out["installed"] = True
    except memfit.MemfitError as e:
        out["installed"] = False
        out["error"] = str(e)
    out["calls"] = [c if isinstance(c, str) else list(c) for c in calls]
    out["created"] = bool(L.lib().memfit_plugin_allocator_if_created())
    out["intent"] = os.environ.get("MEMFIT_INSTALL")
    out["conf"] = os.environ.get("MEMFIT_CONF")
    a = memfit.current()
    if a is not None:
        out["stats_before"] = a.stats()["allocated_bytes"]["current"]
        from memfit import torch_stats
        out["capacity_before"] = torch_stats.capacity(a, 0)  # what mem_get_info reports before creation
        out["created_after_stats"] = bool(L.lib().memfit_plugin_allocator_if_created())
        # PyTorch's first CUDA allocation: memfit_malloc through the plugin.
        import ctypes
        f = L.lib().memfit_malloc
        f.restype, f.argtypes = ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        p = f(1 << 20, 0, None)
        out["created_after_malloc"] = bool(L.lib().memfit_plugin_allocator_if_created())
        out["allocated"] = a.stats()["allocated_bytes"]["current"]
        out["capacity"] = a.capacity()
        out["routed"] = torch.cuda.memory_allocated() == out["allocated"]
    print("RESULT " + json.dumps(out))
""")


def _run(options, **env):
    result = run_python(["-c", _CHILD, json.dumps(options)], env=python_env(**env))
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert result.returncode == 0 and lines, describe(result)
    return json.loads(lines[-1][len("RESULT "):]), result


def test_install_swaps_after_validating_and_creates_the_allocator_at_the_first_allocation():
    # backend:virtual stands in for the GPU (the plugin reads MEMFIT_CONF after its backend:cuda).
    out, result = _run({"capacity": "64MiB"}, MEMFIT_CONF="backend:virtual")
    assert out["installed"], describe(result)
    assert "is_available" not in out["calls"], out  # it would initialize CUDA
    assert out["calls"].index("swap") > out["calls"].index("reset_fn"), out
    assert ["pluggable", "memfit_malloc", "memfit_free"] in out["calls"]
    # The caller's options reach the plugin by memfit_plugin_configure: the environment is left alone.
    assert out["intent"] == "cuda" and out["conf"] == "backend:virtual"
    assert not out["created"], "install created the allocator (and so would have initialized CUDA)"
    assert out["stats_before"] == 0 and not out["created_after_stats"], "reading stats created the allocator"
    assert out["capacity_before"] == 64 << 20, "before creation, the capacity given to install was not seen"
    assert out["created_after_malloc"] and out["allocated"] == 1 << 20
    assert out["capacity"] == 64 << 20 and out["routed"]


def test_bad_options_fail_before_the_swap_and_leave_everything_as_it_was():
    out, result = _run({}, MEMFIT_CONF="backend:virtual,capacty:1GiB")
    assert not out["installed"] and "capacty" in out["error"] and "unchanged" in out["error"], out
    assert "swap" not in out["calls"] and not any(isinstance(c, list) for c in out["calls"]), out
    assert out["intent"] is None and out["conf"] == "backend:virtual,capacty:1GiB"


def test_no_driver_fails_before_the_swap():
    # The default backend is cuda: on this machine libcuda.so.1 does not load.
    out, result = _run({"capacity": "1GiB"})
    assert not out["installed"] and "libcuda.so.1" in out["error"], out
    assert "swap" not in out["calls"], out
    assert out["conf"] is None, "install put its options in MEMFIT_CONF"


def test_bad_options_in_code_fail_before_the_swap():
    out, result = _run({"capacity": "10XB"}, MEMFIT_CONF="backend:virtual")
    assert not out["installed"] and "10XB" in out["error"] and "unchanged" in out["error"], out
    assert "memfit_plugin_configure" in out["error"], out
    assert "swap" not in out["calls"] and out["conf"] == "backend:virtual", out


def test_is_out_of_memory_knows_both_types_of_the_plugins_oom():
    import torch

    import memfit

    assert memfit.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    # The plugin's OOM when no libtorch-built thrower could be registered.
    assert memfit.is_out_of_memory(RuntimeError("CUDA out of memory. memfit: out of memory on device 0: ..."))
    assert memfit.is_out_of_memory(memfit.MemfitOutOfMemoryError("memfit: ..."))
    assert not memfit.is_out_of_memory(RuntimeError("memfit: stream 0x1 of device 0 is capturing a CUDA graph"))
    assert not memfit.is_out_of_memory(ValueError("CUDA out of memory."))
    assert not memfit.is_out_of_memory(RuntimeError("expected CUDA out of memory. got none"))
