# test_venv_install.py — the package as a user installs it: a venv (with the
# system's torch visible), `pip install --no-build-isolation ./bindings/python`
# (which builds the C libraries and installs memfit-autoload.pth), then, with
# PYTORCH_CUDA_ALLOC_CONF=backend:memfit,capacity:1GiB set in a parent process,
# `python3 -m memfit env --json` in its child says memfit is active (switched on
# by the inherited MEMFIT_INSTALL), and `import torch` works in both. Nothing
# from the checkout is on the path of those processes.
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, describe

pytest.importorskip("torch")

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
                                  "memfit_file": __import__("memfit").__file__}))
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    python = env_dir / "bin" / "python3"
    build = root / "wheel-build"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMFIT_", "PYTORCH_")) and k != "PYTHONPATH"}
    env["MEMFIT_WHEEL_BUILD_DIR"] = str(build)
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                             str(REPO / "bindings" / "python")], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, describe(result)
    return python, env, root


def test_a_child_of_a_process_with_backend_memfit_says_memfit_is_active(venv):
    python, env, root = venv
    run_env = dict(env, PYTORCH_CUDA_ALLOC_CONF="backend:memfit,capacity:1GiB")
    run_env.pop("MEMFIT_WHEEL_BUILD_DIR")
    result = subprocess.run([str(python), "-c", _PARENT], env=run_env, cwd=root, capture_output=True, text=True,
                            timeout=300)
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert result.returncode == 0 and lines, describe(result)
    out = json.loads(lines[-1][len("RESULT "):])
    assert str(root) in out["memfit_file"], f"memfit came from {out['memfit_file']}, not the venv"
    assert out["parent_var"] is None  # the .pth took memfit's keys out before torch read the variable
    assert out["env_rc"] == 0, out["env_err"]
    report = json.loads(out["env"])
    assert report["active"] is True and report["backend"] == "cuda", report
    assert report["asked_by"] == "MEMFIT_INSTALL" and report["status"] == "armed", report
    assert "capacity:1GiB" in json.dumps(report["options"]), report
    assert out["torch_child_rc"] == 0 and out["torch_child"] == "2.0"


def test_the_installed_planner_plans(venv):
    python, env, root = venv
    env = dict(env)
    env.pop("MEMFIT_WHEEL_BUILD_DIR")
    sample = REPO / "planner" / "examples" / "sample_profile.json"
    result = subprocess.run([str(python), "-m", "memfit", "plan", "--profile", str(sample), "--budget", "8.5GiB",
                             "--json"], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["budget_bytes"] == 17 << 29  # 8.5GiB, by the one size parser
