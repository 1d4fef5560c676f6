# test_gpu_script.py — the prepared GPU session (benchmarks/gpu/run.sh) is known to start:
# its --dry-run runs every step on the CPU against the already-built tree (MEMFIT_BUILD_DIR,
# --no-build, so CI does not build twice) and writes a well-formed report in which every step
# has a status; the budget table fits one device call of 8 minutes and README.md quotes it.
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUILD, REPO, adapter_problem

RUN = REPO / "benchmarks" / "gpu" / "run.sh"
STATUSES = {"ok", "failed", "timeout", "skipped"}
# What must work on a CPU: these steps have CPU stand-ins (benchmarks/gpu/README.md).
CPU_STEPS = ("env", "ctest-cuda", "train-native", "train-memfit", "cuda-findings", "memory-runs", "traces",
             "plan-verify", "ctest-all")


def budget_table() -> dict:
    out = subprocess.run(["bash", str(RUN), "--list"], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) >= 3 and f[1].isdigit() and f[0] != "total":
            rows[f[0]] = (int(f[1]), int(f[2]))
    return rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-out")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMFIT_CONF", "MEMFIT_INSTALL", "OUT")}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(RUN), "--dry-run", "--out", str(out), "--build-dir", str(BUILD), "--no-build"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=400)
    return out, done


def test_dry_run_writes_a_well_formed_report(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu-report.json").read_text())
    assert report["format"] == "memfit-gpu-report" and report["version"] == 1
    assert report["mode"] == "dry-run"
    for key in ("date", "versions", "device", "host", "steps", "results", "aims", "budget_table", "wall_seconds"):
        assert key in report, key
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"])
    for key in ("torch", "python", "gcc", "cmake", "git_commit"):
        assert key in report["versions"], key
    names = [s["name"] for s in report["steps"]]
    assert names == list(budget_table()), names  # every step of the table, in its order, once
    for s in report["steps"]:
        assert s["status"] in STATUSES, s
        if s["status"] != "ok":
            assert s["reason"], f"step {s['name']} is {s['status']} without a reason"
    for a in report["aims"]:
        assert set(a) >= {"aim", "met", "value", "detail"} and a["met"] in (True, False, None), a
    md = (out / "gpu-report.md").read_text()
    assert "DRY RUN" in md and "| step | status |" in md
    # What comes back from a device call: at most 8 files, plain names (the device tool's limits).
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert "gpu-logs.tar.gz" in files


def test_dry_run_cpu_stand_ins_ran(dry_run):
    problem = adapter_problem()
    if problem:
        pytest.skip(problem)
    out, _ = dry_run
    report = json.loads((out / "gpu-report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    bad = {n: (steps[n]["status"], steps[n]["reason"]) for n in CPU_STEPS if steps[n]["status"] != "ok"}
    assert not bad, bad
    assert steps["sanitizer"]["status"] == "skipped" and steps["autoload"]["status"] == "skipped"
    assert steps["configure"]["reason"].startswith("--no-build") and steps["build"]["status"] == "skipped"
    res = report["results"]
    w = res["train-memfit"]["worker"]
    assert w["oom"]["big_tensor"]["is_torch_oom"] and w["oom"]["loop_goes_on"]["steps"] == 3, w["oom"]
    assert w["memory"]["reserved_over_allocated"] >= 1.0
    assert res["train-native"]["worker"]["main"]["median_seconds"] > 0
    assert res["plan-verify"]["verify"]["oom"] is False
    assert res["plan-verify"]["probes"]["largest_fit"] >= res["plan-verify"]["plan"]["batch_size"]


def test_budget_fits_one_device_call():
    rows = budget_table()
    gpu_total = sum(g for g, _ in rows.values())
    text = RUN.read_text()
    limit = int(re.search(r"^TOTAL_GPU=(\d+)", text, re.M).group(1))
    assert gpu_total <= limit <= 480, (gpu_total, limit)
    readme = (REPO / "benchmarks" / "gpu" / "README.md").read_text()
    for name, (gpu, dry) in rows.items():  # README.md's budget table is run.sh's
        assert re.search(rf"^\| `{re.escape(name)}` \| {gpu} \| {dry} \|", readme, re.M), name
