"""fp16 as people train it: with a GradScaler. The profile's fp16 settings and
verify of a plan with fp16 layers scale the loss, step through the scaler and
update it; memfit.needs_grad_scaler(plan) tells a training loop it needs one."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_memfit

JOB = "memfit.models:mlp_job"


def test_fp16_profile_plan_and_verify_use_a_grad_scaler(tmp_path: Path) -> None:
    import memfit

    profile_path, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    done = run_memfit("profile", "--job", JOB, "--batch-sizes", "4,8", "--precisions", "fp32,fp16", "--steps", "1",
                      "--warmup-steps", "1", "--timing-batches", "none", "--out", str(profile_path), "-q")
    assert done.returncode == 0, done.stderr
    profile = json.loads(profile_path.read_text())
    fixed = {(s["precision"], s["batch_size"]): s["fixed_bytes"] for s in profile["settings"]}
    # The scaler's state (its scale and growth tracker) lives through the fp16 steps.
    assert fixed[("fp16", 4)] > fixed[("fp32", 4)], fixed

    done = run_memfit("plan", "--profile", str(profile_path), "--budget", "48MiB", "--precisions", "fp16",
                      "--out", str(plan_path), "-q")
    assert done.returncode == 0, done.stderr
    assert memfit.needs_grad_scaler(plan_path)
    assert {layer["precision"] for layer in json.loads(plan_path.read_text())["layers"]} == {"fp16"}
    done = run_memfit("verify", "--job", JOB, "--plan", str(plan_path), "--json", "--steps", "1", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["oom"] is False
    assert abs(result["error_percent"]) <= 5, result


def test_needs_grad_scaler_reads_the_plan() -> None:
    import memfit

    def plan(*precisions: str) -> "memfit.Plan":
        return memfit.Plan({"batch_size": 1, "layers": [{"name": f"l{i}", "checkpoint": False, "precision": p}
                                                        for i, p in enumerate(precisions)]})

    assert memfit.needs_grad_scaler(plan("fp32", "fp16"))
    assert not memfit.needs_grad_scaler(plan("fp32", "bf16"))
