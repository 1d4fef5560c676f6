# test_venv_install.py — the package as a user installs it: a venv (with the
# system's torch visible), `pip install --no-build-isolation <checkout>` (the
# top-level pyproject.toml: scikit-build-core builds the C libraries and installs
# memfit-autoload.pth, memfit-plan and memfit-replay), then, with
# PYTORCH_CUDA_ALLOC_CONF=backend:memfit,capacity:1GiB set in a parent process,
# `python3 -m memfit env --json` in its child says memfit is active (switched on
# by the inherited MEMFIT_INSTALL), and `import torch` works in both; the
# installed planner plans, and the venv's memfit-plan and memfit-replay run,
# memfit-plan by name as the OOM report prints it. Nothing from the checkout is
# on the path of those processes.
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, describe

pytest.importorskip("torch")
pytest.importorskip("scikit_build_core", reason="pip install --no-build-isolation needs scikit-build-core (pyproject.toml)")

_PARENT = textwrap.dedent("""
    import json, os, subprocess, sys
    import torch
    assert torch.ones(3).sum().item() == 3.0
    child = subprocess.run([sys.executable, "-m", "memfit", "env", "--json"], capture_output=True, text=True)
    torch_child = subprocess.run([sys.executable, "-c", "import torch; print(torch.ones(2).sum().item())"],
                                 capture_output=True, text=True)
    print("RESULT " + json.dumps({"env_rc": child.returncode, "env": child.stdout, "env_err": child.stderr,
                                  "torch_child": torch_child.stdout.strip(), "torch_child_rc": torch_child.returncode,
                                  "parent_var": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                                  "memfit_file": __import__("memfit").__file__,
                                  "library": str(__import__("memfit")._lib.library_path())}))
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    python = env_dir / "bin" / "python3"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEMFIT_", "PYTORCH_")) and k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                             str(REPO)], env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, describe(result)
    return python, env, root


def test_a_child_of_a_process_with_backend_memfit_says_memfit_is_active(venv):
    python, env, root = venv
    run_env = dict(env, PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")
    result = subprocess.run([str(python), "-c", _PARENT], env=run_env, cwd=root, capture_output=True, text=True,
                            timeout=300)
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert result.returncode == 0 and lines, describe(result)
    out = json.loads(lines[-1][len("RESULT "):])
    assert str(root) in out["memfit_file"], f"memfit came from {out['memfit_file']}, not the venv"
    assert out["library"].startswith(str(root)) and "/memfit/_libs/" in out["library"], out["library"]
    assert out["parent_var"] is None  # the .pth took memfit's keys out before torch read the variable
    assert out["env_rc"] == 0, out["env_err"]
    report = json.loads(out["env"])
    assert report["active"] is True and report["backend"] == "cuda", report
    assert report["asked_by"] == "MEMFIT_INSTALL" and report["status"] == "armed", report
    assert "capacity:1GiB" in json.dumps(report["options"]), report
    assert out["torch_child_rc"] == 0 and out["torch_child"] == "2.0"


def test_the_installed_planner_plans(venv):
    python, env, root = venv
    sample = REPO / "planner" / "examples" / "sample_profile.json"
    result = subprocess.run([str(python), "-m", "memfit", "plan", "--profile", str(sample), "--budget", "8.5GiB",
                             "--json"], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["budget_bytes"] == 17 << 29  # 8.5GiB, by the one size parser


def test_the_venvs_tools_run_and_the_oom_reports_command_as_printed(venv):
    python, env, root = venv
    bindir = python.parent
    for tool in ("memfit-plan", "memfit-replay"):
        result = subprocess.run([str(bindir / tool), "--help"], env=env, cwd=root, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: {tool} "), describe(result)
    # The OOM report says `memfit-plan PROFILE.json --budget SIZE`: by name, from PATH.
    sample = REPO / "planner" / "examples" / "sample_profile.json"
    path_env = dict(env, PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run(f"memfit-plan '{sample}' --budget 16GiB", shell=True, env=path_env, cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "batch size" in result.stdout, describe(result)
    result = subprocess.run([str(python), "-m", "memfit", "--help"], env=env, cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "usage: python3 -m memfit" in result.stdout, describe(result)


def test_the_wheels_version_is_cmakes(venv):
    python, env, root = venv
    cmake = re.search(r"project\(memfit VERSION ([0-9.]+)", (REPO / "CMakeLists.txt").read_text()).group(1)
    result = subprocess.run([str(python), "-c", "import importlib.metadata as m, memfit; "
                             "print(m.version('memfit'), memfit.__version__)"],
                            env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == [cmake, cmake], describe(result)
