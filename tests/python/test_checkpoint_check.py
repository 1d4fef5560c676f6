"""The checkpoint check (planner/PLAN.md): the profile measures a plan with
every other layer checkpointed, and the planner keeps plans that checkpoint
below their limit by the model's measured error. The job is an LSTM language
model whose residual add runs in the parent, where the older model of
checkpointing (a checkpointed layer keeps only its output) under-predicts:
without the check its plan for 120 MiB ran out of memory. With what a
checkpointed layer keeps measured, the model predicts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_memfit

JOB = str(Path(__file__).resolve().parent / "jobs" / "lstm_lm.py") + ":make"
BUDGET = "120MiB"

pytestmark = pytest.mark.needs_adapter




def test_measured_checkpointing_fits_and_the_check_corrects_an_older_profile(tmp_path: Path) -> None:
    profile_path, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    done = run_memfit("profile", "--job", JOB, "--batch-sizes", "2,4", "--steps", "2",
                      "--timing-batches", "none", "--out", str(profile_path), "--quiet")
    assert done.returncode == 0, done.stderr
    profile = json.loads(profile_path.read_text())
    checks = profile["checkpoint_checks"]
    assert [c["batch_size"] for c in checks] == [2, 4] and {c["precision"] for c in checks} == {"fp32"}
    names = [layer["name"] for layer in profile["settings"][0]["layers"]]
    # checkpointed, kept, selectively checkpointed in turn
    assert all(c["checkpointed_layers"] == names[::3] and c["selective_layers"] == names[2::3] for c in checks)

    # With what checkpointing keeps measured, the model predicts the mixed plans
    # of the checks, and the plan runs close to its prediction.
    done = run_memfit("plan", "--profile", str(profile_path), "--budget", BUDGET, "--out", str(plan_path), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(plan_path.read_text())
    assert any(layer["checkpoint"] for layer in plan["layers"])
    assert plan["model_error_checkpoint"] < 0.01, plan["checkpoint_checks"]
    done = run_memfit("verify", "--job", JOB, "--plan", str(plan_path), "--budget", BUDGET, "--json", "--steps", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["oom"] is False
    assert result["measured_peak_reserved_bytes"] <= plan["budget_bytes"]
    assert abs(result["measured_peak_bytes"] - result["predicted_peak_bytes"]) <= 0.02 * result["predicted_peak_bytes"]

    # The same profile in the older form (no checkpointed runs): the derived model ("a checkpointed layer keeps
    # only its output") under-predicts this model, and the check keeps the
    # plan below its limit by that error; without the check the batch is larger
    # (the one that ran out of memory before checks existed).
    older = json.loads(profile_path.read_text())
    for setting in older["settings"]:
        del setting["checkpointed"], setting["selective"]
    for check in older["checkpoint_checks"]:  # older checks named only the layers checkpointed
        check["checkpointed_layers"] += check.pop("selective_layers")
    older.pop("timing", None)  # nor were steps timed (a checkpointed timing point needs checkpointed runs)
    (tmp_path / "older.json").write_text(json.dumps(older))
    done = run_memfit("plan", "--profile", str(tmp_path / "older.json"), "--budget", BUDGET, "--json")
    assert done.returncode == 0, done.stderr
    corrected = json.loads(done.stdout)
    assert corrected["checkpoint_correction_bytes"] > 0
    assert corrected["predicted_peak_bytes"] + corrected["checkpoint_correction_bytes"] <= \
        corrected["usable_allocated_bytes"]
    del older["checkpoint_checks"]
    (tmp_path / "bare.json").write_text(json.dumps(older))
    done = run_memfit("plan", "--profile", str(tmp_path / "bare.json"), "--budget", BUDGET, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["batch_size"] > corrected["batch_size"]
