# test_env.py — `python3 -m memfit env [--json] [--import-torch]` in child
# processes, as a user runs it: off without variables; armed by
# PYTORCH_CUDA_ALLOC_CONF=backend:memfit,... or MEMFIT_INSTALL=cuda (at
# `import memfit`, which runs the autoload); what --import-torch makes of it on
# this CPU build; where libmemfit.so came from; and that torch is not imported
# unless asked (checked in the child after the command ran).
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import BUILD, describe, python_env, run_python

# Runs the command in-process, then says whether torch got imported along the way.
_CHILD = ("import json, sys; from memfit.cli import main; code = main(sys.argv[1:]); "
          "print(json.dumps({'torch_in_sys_modules': 'torch' in sys.modules, 'code': code}))")


def env_json(*args: str, **variables: str):
    env = python_env(**variables)
    env.pop("MEMFIT_LIBRARY", None)  # the library comes from MEMFIT_BUILD_DIR here
    result = run_python(["-c", _CHILD, "env", "--json", *args], env=env)
    assert result.returncode == 0, describe(result)
    out, _, last = result.stdout.rstrip().rpartition("\n")
    after = json.loads(last)
    assert after["code"] == 0, describe(result)
    return json.loads(out), after["torch_in_sys_modules"], result


def test_env_without_variables_is_off_and_does_not_import_torch():
    info, torch_imported, _ = env_json()
    assert torch_imported is False
    assert info["active"] is False and info["status"] == "off"
    assert info["asked_by"] is None and info["reason"] is None and info["backend"] is None
    assert info["asked_in_environment"] == []
    assert info["options"] == {"memfit": "", "MEMFIT_CONF": None, "PYTORCH_CUDA_ALLOC_CONF": None,
                               "PYTORCH_ALLOC_CONF": None, "MEMFIT_INSTALL": None}
    assert info["library"] == str((BUILD / "allocator" / "libmemfit.so").resolve())
    assert info["library_source"] == "MEMFIT_BUILD_DIR"
    assert info["library_error"] is None
    assert info["torch"]["imported"] is False and info["torch"]["cuda_initialized"] is False
    assert info["torch"]["cuda_built"] is None  # unknown without importing it
    torch = pytest.importorskip("torch")
    assert info["torch"]["version"] == torch.__version__  # from the package metadata


def test_pytorch_variable_arms_memfit():
    info, torch_imported, _ = env_json(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB,expandable_segments:True")
    assert torch_imported is False
    assert info["active"] is True and info["status"] == "armed"
    assert info["asked_by"] == "PYTORCH_CUDA_ALLOC_CONF"
    assert info["backend"] == "cuda"
    assert info["options"]["memfit"] == "capacity:1GiB"
    assert info["options"]["MEMFIT_CONF"] == "capacity:1GiB"  # where the plugin reads it
    assert info["options"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"  # PyTorch's key stays
    assert info["options"]["MEMFIT_INSTALL"] == "cuda"  # for the children
    assert info["torch"]["imported"] is False


def test_generic_variable_is_named_too():
    info, _, _ = env_json(PYTORCH_ALLOC_CONF="backend:memfit")
    assert info["status"] == "armed" and info["asked_by"] == "PYTORCH_ALLOC_CONF"
    assert info["options"]["PYTORCH_ALLOC_CONF"] is None  # nothing left for PyTorch: deleted


def test_memfit_install_arms_memfit():
    info, torch_imported, _ = env_json(MEMFIT_INSTALL="cuda", MEMFIT_CONF="capacity:2GiB")
    assert torch_imported is False
    assert info["active"] is True and info["status"] == "armed"
    assert info["asked_by"] == "MEMFIT_INSTALL"
    assert info["options"]["MEMFIT_CONF"] == "capacity:2GiB"
    assert info["asked_in_environment"] == ["MEMFIT_INSTALL"]


def test_bad_memfit_install_value_is_a_failure_with_its_reason():
    info, _, _ = env_json(MEMFIT_INSTALL="gpu")
    assert info["active"] is False and info["status"] == "failed"
    assert info["asked_by"] == "MEMFIT_INSTALL" and "'gpu'" in info["reason"]


def test_import_torch_shows_what_the_install_did():
    torch = pytest.importorskip("torch")
    info, torch_imported, result = env_json("--import-torch", PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")
    assert torch_imported is True
    t = info["torch"]
    assert t["imported"] is True and t["imported_by_env"] is True
    assert t["version"] == torch.__version__
    assert t["cuda_built"] is bool(torch.version.cuda or torch.version.hip)
    assert t["cuda_initialized"] is False  # installing memfit initializes nothing
    assert info["asked_by"] == "PYTORCH_CUDA_ALLOC_CONF"
    if not t["cuda_built"]:
        assert info["status"] == "failed" and info["active"] is False and info["backend"] is None
        assert "without CUDA" in info["reason"]
        assert "without CUDA" in result.stderr  # the autoload's own one line
    else:
        assert info["status"] in ("installed", "failed")
        assert info["active"] is (info["status"] == "installed")


def test_variable_set_after_the_autoload_ran_is_explained():
    code = ("import json, os, memfit; os.environ['MEMFIT_INSTALL'] = 'cuda'; "
            "from memfit.env import describe; print(json.dumps(describe()))")
    result = run_python(["-c", code], env=python_env())
    assert result.returncode == 0, describe(result)
    info = json.loads(result.stdout)
    assert info["status"] == "off" and info["active"] is False
    assert info["asked_in_environment"] == ["MEMFIT_INSTALL"]
    assert "MEMFIT_INSTALL asks for memfit" in info["reason"] and "ran before" in info["reason"]


def test_missing_library_is_reported_not_raised(tmp_path: Path):
    info, _, _ = env_json(MEMFIT_BUILD_DIR=str(tmp_path))
    assert info["library"] is None and info["library_source"] is None
    assert "libmemfit.so not found" in info["library_error"] and str(tmp_path) in info["library_error"]


def test_explicit_library_variable_is_named():
    path = (BUILD / "allocator" / "libmemfit.so").resolve()
    if not path.is_file():
        pytest.skip(f"libmemfit.so is not built in {BUILD}")
    env = python_env(MEMFIT_LIBRARY=str(path))
    result = run_python(["-m", "memfit", "env", "--json"], env=env)
    assert result.returncode == 0, describe(result)
    info = json.loads(result.stdout)
    assert info["library"] == str(path) and info["library_source"] == "MEMFIT_LIBRARY"


def test_human_output_is_aligned_lines():
    env = python_env(PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")
    env.pop("MEMFIT_LIBRARY", None)
    result = run_python(["-m", "memfit", "env"], env=env)
    assert result.returncode == 0, describe(result)
    lines = result.stdout.rstrip("\n").split("\n")
    assert lines[0] == "memfit env"
    rows = {line[2:].split("  ", 1)[0]: line for line in lines[1:]}
    for label in ("active", "status", "asked by", "reason", "backend", "memfit options", "MEMFIT_CONF",
                  "PYTORCH_CUDA_ALLOC_CONF", "library", "torch"):
        assert label in rows, f"no {label!r} line in\n{result.stdout}"
    columns = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in lines[1:]}
    assert len(columns) == 1, f"values do not start in one column:\n{result.stdout}"
    assert rows["active"].endswith("yes") and rows["asked by"].endswith("PYTORCH_CUDA_ALLOC_CONF")
    assert rows["memfit options"].endswith("capacity:1GiB")
    assert "(MEMFIT_BUILD_DIR" in rows["library"]
    assert "not imported" in rows["torch"]


@pytest.mark.needs_adapter
def test_describe_in_a_process_where_memfit_is_the_cpu_allocator():
    code = ("import json, memfit; memfit.install(device='cpu', capacity='1GiB'); "
            "from memfit.env import describe; print(json.dumps(describe()))")
    result = run_python(["-c", code], env=python_env())
    assert result.returncode == 0, describe(result)
    info = json.loads(result.stdout)
    assert info["active"] is True and info["status"] == "installed" and info["backend"] == "host"
    assert info["capacity"] == 1 << 30
    assert "memfit.install(device='cpu')" in info["reason"]
    assert info["library_loaded"] is True
    assert info["torch"]["imported"] is True and info["torch"]["imported_by_env"] is False


def test_env_is_in_the_command_list():
    result = run_python(["-m", "memfit", "--help"], env=python_env())
    assert result.returncode == 0, describe(result)
    assert "env" in result.stdout.split("{", 1)[1].split("}", 1)[0].split(","), result.stdout
