# test_plan_table.py — the plan's table prints whatever the planner can
# return. A profile whose step times fall with the batch (timing noise on a
# loaded machine can do that) used to extrapolate to a step of 0 s at the
# planned batch; the planner now holds such a time at its mean (PLAN.md, "Step
# times"). A profile whose times are all 0 still gives a step of 0 s, and the
# plan's throughput is then null: the table used to raise a TypeError on it,
# which turned noise into a crashed `memfit plan`.
from __future__ import annotations

import json
from pathlib import Path

import pytest

import memfit

pytestmark = pytest.mark.needs_lib

SAMPLE = Path(__file__).resolve().parents[2] / "planner" / "examples" / "sample_profile.json"


def _set_times(node, batch, how):
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_seconds") and isinstance(value, (int, float)):
                node[key] = how(value, batch)
            else:
                _set_times(value, batch, how)
    elif isinstance(node, list):
        for item in node:
            _set_times(item, batch, how)


def test_falling_times_do_not_make_the_step_free():
    profile = json.loads(SAMPLE.read_text())
    for setting in profile["settings"]:  # much faster at the larger batch
        _set_times(setting, setting["batch_size"], lambda v, b: v if b == 2 else v * 1e-3)
    plan = memfit.plan(profile, budget="64GiB")
    assert plan.data["predicted_step_seconds"] > 0
    assert plan.data["throughput_samples_per_second"] > 0
    assert "samples/s predicted" in plan.table()


def test_a_plan_with_a_null_throughput_prints():
    profile = json.loads(SAMPLE.read_text())
    for setting in profile["settings"]:
        _set_times(setting, setting["batch_size"], lambda v, b: 0.0)
    plan = memfit.plan(profile, budget="64GiB")
    assert plan.data["throughput_samples_per_second"] is None, plan.data["predicted_step_seconds"]
    table = plan.table()
    assert "throughput not predicted" in table
    assert f"batch {plan.batch_size}" in table or str(plan.batch_size) in table


@pytest.mark.parametrize("headroom", [float("nan"), float("inf"), -0.1, 1.0, "3%", True])
def test_a_bad_headroom_is_named(headroom):
    profile = json.loads(SAMPLE.read_text())
    with pytest.raises(memfit.MemfitError, match="headroom must be a fraction"):
        memfit.plan(profile, budget="64GiB", headroom=headroom)
