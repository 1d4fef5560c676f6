# test_autoload.py — memfit-autoload.pth / memfit._autoload / memfit._conf.
#
# The .pth file is processed only in site directories, so each child Python
# puts a copy of it in a temporary directory and calls site.addsitedir() on it
# (PYTHONPATH points at bindings/python for the package itself). With
# backend:memfit in PYTORCH_CUDA_ALLOC_CONF or PYTORCH_ALLOC_CONF the hook takes
# memfit's keys out before torch reads the variable and moves them to
# MEMFIT_CONF; on this CPU-only machine it then says that CUDA is unavailable
# and leaves PyTorch's allocator alone. The children run concurrently.
from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from conftest import PYDIR, describe, finish_python, python_env, start_python
from memfit._conf import ENV_VARS, MEMFIT_KEYS, split_conf, take_memfit_conf

PTH = PYDIR / "memfit-autoload.pth"
NO_CUDA = "PyTorch sees no CUDA device; PyTorch's allocator is unchanged"

# --------------------------------------------------------------- _conf units


def test_split_conf():
    assert split_conf("backend:memfit,capacity:2GiB,expandable_segments:True") == (
        True, ["capacity:2GiB"], ["expandable_segments:True"])
    assert split_conf(" backend : memfit , max_split_size:64MiB,check:true , roundup_power2_divisions:4") == (
        True, ["max_split_size:64MiB", "check:true"], ["roundup_power2_divisions:4"])
    assert split_conf("backend:memfit") == (True, [], [])
    # Without backend:memfit nothing is memfit's, even keys memfit knows.
    assert split_conf("capacity:2GiB,expandable_segments:True") == (
        False, [], ["capacity:2GiB", "expandable_segments:True"])
    assert split_conf("backend:native,capacity:1GiB") == (False, [], ["backend:native", "capacity:1GiB"])
    assert split_conf("") == (False, [], [])
    assert split_conf("backend:memfit,,") == (True, [], [])
    assert set(MEMFIT_KEYS).isdisjoint({"backend", "devices"})


def test_take_memfit_conf_from_the_cuda_variable():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True", "HOME": "/x"}
    assert take_memfit_conf(env) == "capacity:2GiB"
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "MEMFIT_CONF": "capacity:2GiB",
                   "HOME": "/x"}


def test_take_memfit_conf_from_the_generic_variable_appends_to_memfit_conf():
    env = {"PYTORCH_ALLOC_CONF": "capacity:1GiB,backend:memfit,event_log:65536", "MEMFIT_CONF": "check:true"}
    assert take_memfit_conf(env) == "capacity:1GiB,event_log:65536"
    assert env == {"MEMFIT_CONF": "check:true,capacity:1GiB,event_log:65536"}  # nothing left: deleted


def test_take_memfit_conf_from_both_variables():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB",
           "PYTORCH_ALLOC_CONF": "backend:memfit,max_split_size:32MiB,pinned_use_host_register:True"}
    assert take_memfit_conf(env) == "capacity:2GiB,max_split_size:32MiB"
    assert env == {"PYTORCH_ALLOC_CONF": "pinned_use_host_register:True",
                   "MEMFIT_CONF": "capacity:2GiB,max_split_size:32MiB"}


def test_take_memfit_conf_without_memfit_changes_nothing():
    for env in ({}, {"PYTORCH_CUDA_ALLOC_CONF": "capacity:2GiB,expandable_segments:True"},
                {"PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync", "MEMFIT_CONF": "capacity:1GiB"}):
        copy = dict(env)
        assert take_memfit_conf(env) is None
        assert env == copy


def test_take_memfit_conf_with_only_the_backend():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit"}
    assert take_memfit_conf(env) == ""
    assert env == {}  # no MEMFIT_CONF: there was nothing to put in it
    assert ENV_VARS == ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


@pytest.mark.needs_lib
def test_memfit_keys_are_the_option_table_minus_backend_and_devices():
    from memfit._lib import option_keys

    assert sorted(MEMFIT_KEYS) == sorted(set(option_keys()) - {"backend", "devices"})


# ---------------------------------------------------------- child processes

torch = pytest.importorskip("torch")

_CHILD = textwrap.dedent("""
    import json, os, sys
    KEYS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMFIT_CONF")
    out = {}
    if sys.argv[2] == "torch-first":
        import torch
    import site
    site.addsitedir(sys.argv[1])
    out["hooked"] = "memfit._autoload" in sys.modules
    out["torch_imported_by_hook"] = "torch" in sys.modules and sys.argv[2] != "torch-first"
    out["ctypes_imported_by_hook"] = "ctypes" in sys.modules
    out["before_torch"] = {k: os.environ.get(k) for k in KEYS}
    import os, torch
    out["after"] = {k: os.environ.get(k) for k in KEYS}
    out["cuda"] = torch.cuda.is_available()
    out["sum"] = torch.ones(4, 4).sum().item()
    import memfit
    out["installed"] = memfit.current() is not None
    with open("/proc/self/maps") as f:
        maps = f.read()
    out["libmemfit_loaded"] = "libmemfit" in maps
    print("RESULT " + json.dumps(out))
""")

CASES = {
    "cuda-var": ({"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True"}, "plain"),
    "generic-var": ({"PYTORCH_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True"}, "plain"),
    "torch-first": ({"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True"},
                    "torch-first"),
    "no-memfit": ({"PYTORCH_CUDA_ALLOC_CONF": "capacity:2GiB,expandable_segments:True"}, "plain"),
}


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    shutil.copy(PTH, site_dir / PTH.name)
    procs = {name: start_python(["-c", _CHILD, str(site_dir), mode], env=python_env(**extra))
             for name, (extra, mode) in CASES.items()}
    results = {}
    for name, proc in procs.items():
        result = finish_python(proc)
        lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
        out = json.loads(lines[-1][len("RESULT "):]) if lines else None
        results[name] = (result, out)
    return results


def _get(children, name, hooked=True):
    result, out = children[name]
    assert result.returncode == 0 and out is not None, describe(result)
    assert out["hooked"] == hooked, f"the .pth file {'did not import' if hooked else 'imported'} memfit._autoload"
    assert "Traceback" not in result.stderr, describe(result)
    assert out["sum"] == 16.0 and not out["cuda"]
    return result, out


def test_pth_file_is_one_import_line():
    lines = [x for x in PTH.read_text().splitlines() if x.strip() and not x.startswith("#")]
    # site runs a .pth line only when it starts with "import"; this one imports the
    # hook only when a variable asks for backend:memfit.
    assert len(lines) == 1 and lines[0].startswith("import ")
    assert "__import__('memfit._autoload')" in lines[0] and "'backend:memfit' in" in lines[0]


@pytest.mark.parametrize("name, var", [("cuda-var", "PYTORCH_CUDA_ALLOC_CONF"),
                                       ("generic-var", "PYTORCH_ALLOC_CONF")])
def test_backend_memfit_is_taken_out_before_torch(children, name, var):
    result, out = _get(children, name)
    other = "PYTORCH_ALLOC_CONF" if var == "PYTORCH_CUDA_ALLOC_CONF" else "PYTORCH_CUDA_ALLOC_CONF"
    for stage in ("before_torch", "after"):
        assert out[stage][var] == "expandable_segments:True", out
        assert out[stage][other] is None, out
        assert out[stage]["MEMFIT_CONF"] == "capacity:2GiB", out
    assert not out["torch_imported_by_hook"]  # the hook waits for the program's own `import torch`
    assert NO_CUDA in result.stderr and "backend:memfit" in result.stderr, describe(result)
    assert len([x for x in result.stderr.splitlines() if x.startswith("memfit:")]) == 1, describe(result)
    assert not out["installed"] and not out["libmemfit_loaded"]  # PyTorch's allocator untouched


def test_torch_imported_before_the_hook(children):
    result, out = _get(children, "torch-first")
    assert out["after"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert out["after"]["MEMFIT_CONF"] == "capacity:2GiB"
    assert NO_CUDA in result.stderr, describe(result)
    assert not out["installed"] and not out["libmemfit_loaded"]


def test_without_backend_memfit_nothing_changes(children):
    result, out = _get(children, "no-memfit", hooked=False)
    given = "capacity:2GiB,expandable_segments:True"
    for stage in ("before_torch", "after"):
        assert out[stage] == {"PYTORCH_CUDA_ALLOC_CONF": given, "PYTORCH_ALLOC_CONF": None, "MEMFIT_CONF": None}
    assert "memfit" not in result.stderr, describe(result)
    assert not out["torch_imported_by_hook"]
    assert not out["installed"] and not out["libmemfit_loaded"]


def test_unused_autoload_does_not_import_ctypes(children):
    _, out = _get(children, "no-memfit", hooked=False)
    assert not out["ctypes_imported_by_hook"]
