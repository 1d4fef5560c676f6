# test_autoload.py — memfit-autoload.pth / memfit._autoload / memfit._conf.
#
# The .pth file is processed only in site directories, so each child Python
# puts a copy of it in a temporary directory and calls site.addsitedir() on it
# (PYTHONPATH points at bindings/python for the package itself). With
# backend:memfit in PYTORCH_CUDA_ALLOC_CONF or PYTORCH_ALLOC_CONF the hook takes
# memfit's keys out before torch reads the variable and moves them to
# MEMFIT_CONF and sets MEMFIT_INSTALL=cuda for its own children; on this
# CPU-only PyTorch it then says that PyTorch has no CUDA and leaves PyTorch's
# allocator alone. The children run concurrently.
from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from conftest import PYDIR, describe, finish_python, python_env, start_python
from memfit._conf import ENV_VARS, asks_for_memfit, drop_backend_memfit, memfit_keys, split_conf, take_memfit_conf

PTH = PYDIR / "memfit-autoload.pth"
NO_CUDA = "is built without CUDA; PyTorch's allocator is unchanged"

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
    assert split_conf("backend:memfit,capacity:1GiB,x:1", keys=["x"]) == (True, ["x:1"], ["capacity:1GiB"])
    assert asks_for_memfit(" Backend : MemFit ,x:1") and not asks_for_memfit("backend:native,memfit:1")


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
def test_memfit_keys_are_the_option_table_minus_those_that_select_the_backend():
    from memfit._lib import option_keys

    assert sorted(memfit_keys()) == sorted(set(option_keys()) - {"backend", "devices"})


def test_without_the_library_only_backend_memfit_is_taken_out():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True",
           "PYTORCH_ALLOC_CONF": " backend : memfit "}
    drop_backend_memfit(env)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "capacity:2GiB,expandable_segments:True"}


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
    out["intent"] = os.environ.get("MEMFIT_INSTALL")
    import memfit._autoload
    out["state"] = memfit._autoload.STATE
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
    "no-library": ({"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:2GiB,expandable_segments:True",
                    "MEMFIT_BUILD_DIR": "/nonexistent/memfit-build"}, "plain"),
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
    assert "__import__('memfit._autoload')" in lines[0] and "'memfit' in" in lines[0]
    assert "MEMFIT_INSTALL" in lines[0]


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
    assert not out["installed"]  # PyTorch's allocator untouched (libmemfit.so is loaded: it checked the options)
    assert out["intent"] == "cuda"  # what the process's children inherit
    assert out["state"]["asked_by"] == var and out["state"]["conf"] == "capacity:2GiB"
    assert out["state"]["status"] == "failed" and "without CUDA" in out["state"]["reason"]


def test_torch_imported_before_the_hook(children):
    result, out = _get(children, "torch-first")
    assert out["after"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert out["after"]["MEMFIT_CONF"] == "capacity:2GiB"
    assert NO_CUDA in result.stderr, describe(result)
    assert not out["installed"]


def test_without_the_library_memfit_stays_off_and_says_why(children):
    # memfit's keys are read from libmemfit.so: without it only backend:memfit is taken out.
    result, out = _get(children, "no-library")
    for stage in ("before_torch", "after"):
        assert out[stage]["PYTORCH_CUDA_ALLOC_CONF"] == "capacity:2GiB,expandable_segments:True", out
        assert out[stage]["MEMFIT_CONF"] is None, out
    assert out["state"]["status"] == "failed" and "libmemfit.so not found" in out["state"]["reason"]
    assert "libmemfit.so not found" in result.stderr and "memfit stays off" in result.stderr, describe(result)
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


# ------------------------------------------------- children and import order

_PARENT = textwrap.dedent("""
    import json, os, subprocess, sys, site
    site.addsitedir(sys.argv[1])
    child = subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[1]], capture_output=True, text=True)
    print(child.stdout, end="")
    sys.stderr.write(child.stderr)
""")

_INHERITING_CHILD = textwrap.dedent("""
    import json, os, sys, site
    site.addsitedir(sys.argv[1])
    import memfit._autoload as a
    keys = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMFIT_CONF", "MEMFIT_INSTALL")
    print("RESULT " + json.dumps({"env": {k: os.environ.get(k) for k in keys}, "state": a.STATE,
                                  "torch": "torch" in sys.modules}))
""")


def _result(proc):
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, describe(proc)
    return json.loads(lines[-1][len("RESULT "):])


def test_a_child_process_inherits_memfit(tmp_path):
    """torchrun workers, mp.spawn, Ray and spawn'ed DataLoader workers are
    children that see the parent's stripped environment: MEMFIT_INSTALL carries
    the intent, MEMFIT_CONF the options, and PyTorch's variable stays clean."""
    shutil.copy(PTH, tmp_path / PTH.name)
    proc = finish_python(start_python(["-c", _PARENT, str(tmp_path), _INHERITING_CHILD],
                                      env=python_env(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")))
    out = _result(proc)
    assert out["env"] == {"PYTORCH_CUDA_ALLOC_CONF": None, "PYTORCH_ALLOC_CONF": None, "MEMFIT_CONF": "capacity:1GiB",
                          "MEMFIT_INSTALL": "cuda"}, out
    assert out["state"]["asked_by"] == "MEMFIT_INSTALL" and out["state"]["status"] == "armed", out
    assert not out["torch"]


def test_a_child_given_pytorchs_variable_again_is_stripped_too(tmp_path):
    shutil.copy(PTH, tmp_path / PTH.name)
    env = python_env(MEMFIT_INSTALL="cuda", MEMFIT_CONF="capacity:1GiB",
                     PYTORCH_ALLOC_CONF="backend:memfit,vmm:off,pinned_use_host_register:True")
    out = _result(finish_python(start_python(["-c", _INHERITING_CHILD, str(tmp_path)], env=env)))
    assert out["env"]["PYTORCH_ALLOC_CONF"] == "pinned_use_host_register:True"
    assert out["env"]["MEMFIT_CONF"] == "capacity:1GiB,vmm:off"
    assert out["state"]["asked_by"] == "PYTORCH_ALLOC_CONF" and out["state"]["status"] == "armed"


def test_a_bad_intent_value_is_named_and_memfit_stays_off(tmp_path):
    shutil.copy(PTH, tmp_path / PTH.name)
    proc = finish_python(start_python(["-c", _INHERITING_CHILD, str(tmp_path)], env=python_env(MEMFIT_INSTALL="yes")))
    out = _result(proc)
    assert out["state"]["status"] == "failed" and "MEMFIT_INSTALL='yes'" in proc.stderr, describe(proc)


_NO_SITE = textwrap.dedent("""
    import json, os, sys
    import memfit            # no .pth ran (python -S, embedded, a checkout on PYTHONPATH): importing memfit first
    import torch
    x = torch.ones(2).sum().item()
    print("RESULT " + json.dumps({"var": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                                  "conf": os.environ.get("MEMFIT_CONF"), "state": memfit._autoload.STATE}))
""")


def test_importing_memfit_before_torch_is_a_route_without_the_pth_file():
    proc = finish_python(start_python(["-c", _NO_SITE],
                                      env=python_env(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")))
    out = _result(proc)
    assert out["var"] is None and out["conf"] == "capacity:1GiB", out
    assert out["state"]["asked_by"] == "PYTORCH_CUDA_ALLOC_CONF" and out["state"]["status"] == "failed", out


def test_memfit_run_loads_memfit_before_the_script_imports_torch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch
        print("RESULT " + json.dumps({"argv": sys.argv, "var": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                                      "conf": os.environ.get("MEMFIT_CONF"), "name": __name__}))
    """))
    proc = finish_python(start_python(["-m", "memfit", "run", str(script), "--lr", "3"],
                                      env=python_env(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")))
    out = _result(proc)
    assert out == {"argv": [str(script), "--lr", "3"], "var": None, "conf": "capacity:1GiB", "name": "__main__"}
    missing = finish_python(start_python(["-m", "memfit", "run", str(tmp_path / "nope.py")], env=python_env()))
    assert missing.returncode == 2 and "no such script" in missing.stderr, describe(missing)


def test_backend_memfit_in_other_spelling_and_bad_keys_are_caught_at_start_up(tmp_path):
    shutil.copy(PTH, tmp_path / PTH.name)
    # Spaces and case: memfit's, never left to PyTorch (which would reject the backend).
    out = _result(finish_python(start_python(["-c", _INHERITING_CHILD, str(tmp_path)],
                                             env=python_env(PYTORCH_CUDA_ALLOC_CONF=" Backend : MEMFIT ,vmm:off"))))
    assert out["env"]["PYTORCH_CUDA_ALLOC_CONF"] is None and out["env"]["MEMFIT_CONF"] == "vmm:off", out
    assert out["state"]["status"] == "armed", out
    # A bad value of memfit's own key fails now, with memfit's message, not at the first CUDA allocation.
    proc = finish_python(start_python(["-c", _INHERITING_CHILD, str(tmp_path)],
                                      env=python_env(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:10XB")))
    out = _result(proc)
    assert out["state"]["status"] == "failed" and "unknown unit" in out["state"]["reason"], out
    lines = [x for x in proc.stderr.splitlines() if x.startswith("memfit:")]
    assert len(lines) == 1 and "capacity" in lines[0] and "PyTorch's allocator is unchanged" in lines[0], proc.stderr
    assert out["env"]["PYTORCH_CUDA_ALLOC_CONF"] is None and out["env"]["MEMFIT_INSTALL"] is None, out
    # "memfit" elsewhere in the variable is not a request.
    out = _result(finish_python(start_python(["-c", _INHERITING_CHILD, str(tmp_path)],
                                             env=python_env(PYTORCH_ALLOC_CONF="backend:native,note:memfit"))))
    assert out["state"]["status"] == "off" and out["env"]["PYTORCH_ALLOC_CONF"] == "backend:native,note:memfit"
