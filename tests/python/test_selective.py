"""Selective activation checkpointing as a plan's third choice per layer
(planner/PLAN.md, "Selective checkpointing"): the profile measures every layer
under memfit.selective's policy, the model reproduces those runs, memfit.apply runs
a selective layer with the same policy, and a plan with selective layers fits
within 5% of its prediction on a real model (GPT-2 from the transformers library,
built from config)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from conftest import run_memfit

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

JOBS = Path(__file__).resolve().parent / "jobs" / "real_models.py"
sys.path.insert(0, str(JOBS.parent))

import real_models  # noqa: E402

import memfit  # noqa: E402
from memfit._lib import MemfitError  # noqa: E402
from memfit.planning import Plan, apply, unapply  # noqa: E402
from memfit.selective import context_fn, kept_ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("memfit_cpu")


@pytest.fixture(scope="module")
def gpt2_profile(tmp_path_factory):
    """Measured in its own process: tensors this test process holds from other
    tests would count as the job's fixed bytes."""
    out = tmp_path_factory.mktemp("selective") / "gpt2.json"
    done = run_memfit("profile", "--job", f"{JOBS}:gpt2", "--batch-sizes", "2,4", "--steps", "1", "--warmup-steps", "1",
                      "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    return memfit.Profile.load(out)


def test_the_policy_keeps_matmuls_and_recomputes_the_rest() -> None:
    aten = torch.ops.aten
    assert aten.mm in kept_ops() and aten.addmm in kept_ops() and aten.bmm in kept_ops()
    assert aten.gelu not in kept_ops() and aten.native_layer_norm not in kept_ops()
    # Under the policy a layer keeps less than plain and more than checkpointed.
    layer = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = torch.randn(32, 64, requires_grad=True)

    def saved(run) -> int:
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run().sum().backward()
        return sum(total)
    plain = saved(lambda: layer(x))
    full = saved(lambda: torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False))
    sel = saved(lambda: torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False, context_fn=context_fn()))
    assert full <= sel < plain, (full, sel, plain)


def test_profile_measures_selective_runs_and_the_model_reproduces_them(gpt2_profile) -> None:
    for s in gpt2_profile.settings:
        run = s["selective"]
        assert [layer["name"] for layer in run["layers"]] == [layer["name"] for layer in s["layers"]]
        assert run["peak_allocated_bytes"] != s["checkpointed"]["peak_allocated_bytes"]
    checks = gpt2_profile.data["checkpoint_checks"]
    assert all(c["selective_layers"] for c in checks)
    assert not set(checks[0]["selective_layers"]) & set(checks[0]["checkpointed_layers"])
    p = memfit.plan(gpt2_profile, "64MiB")
    runs = [c for c in p.data["self_check"] if c["selective"]]
    assert len(runs) == len(gpt2_profile.settings)
    assert max(c["error"] for c in p.data["self_check"]) < 0.01, p.data["self_check"]


def test_no_selective_profiles_and_plans_without_it(gpt2_profile) -> None:
    prof = memfit.profile(real_models.gpt2(), batch_sizes=(2, 4), steps=1, warmup_steps=1, selective=False,
                          timing_batches=())
    assert all("selective" not in s for s in prof.settings)
    assert "selective_layers" not in prof.data["checkpoint_checks"][0]
    cheap = _selective_made_cheap(gpt2_profile)
    p = memfit.plan(cheap, _between(gpt2_profile), selective=False)
    assert not any(layer["selective"] for layer in p.layers)


def _selective_made_cheap(prof):
    """The profile with its selective runs timed as a GPU would give them (little
    above plain, well below checkpointed): on a CPU, selective checkpointing's
    per-op dispatch costs more than recomputing the whole block, so the planner
    rightly never picks it. Memory is untouched: what is verified is the model
    of what a selective layer holds."""
    data = copy.deepcopy(prof.data)
    for s in data["settings"]:
        for plain, sel in zip(s["layers"], s["selective"]["layers"]):
            sel["forward_seconds"] = plain["forward_seconds"] * 1.05
            sel["backward_seconds"] = plain["backward_seconds"] * 1.05
    # The untraced selective steps likewise: 5% above the plain step at the same batch.
    plain_step = {(t["precision"], t["batch_size"]): t["step_seconds"] for t in data["timing"] if "mode" not in t}
    selective = [t for t in data["timing"] if t.get("mode") == "selective"]
    assert selective, "the profile has no selective timing points to make cheap"
    for t in selective:
        t["step_seconds"] = plain_step[t["precision"], t["batch_size"]] * 1.05
    return memfit.Profile(data)


def _between(prof) -> int:
    """A budget where the largest plan must recompute some layers but not all."""
    p = memfit.plan(prof, "64MiB", max_batch=8)
    return int(p.data["predicted_reserved_bytes"] * 0.8)


def test_a_plan_with_selective_layers_fits_within_five_percent(gpt2_profile, tmp_path) -> None:
    """Planned here (torch-free), verified in its own process as a user runs it:
    what else this test process holds must not be in the measurement."""
    budget = _between(gpt2_profile)
    p = memfit.plan(_selective_made_cheap(gpt2_profile), budget)
    assert any(layer["selective"] for layer in p.layers), p.table()
    assert p.data["batch_size"] >= memfit.plan(gpt2_profile, budget, selective=False).batch_size
    plan_path = tmp_path / "plan.json"
    p.save(plan_path)
    done = run_memfit("verify", "--job", f"{JOBS}:gpt2", "--plan", str(plan_path), "--budget", str(budget), "--json",
                      "--steps", "2", "--warmup-steps", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert not r["oom"], r
    error = (r["measured_peak_bytes"] - r["predicted_peak_bytes"]) / r["predicted_peak_bytes"]
    assert abs(error) < 0.05, (r, p.table())


def test_apply_runs_selective_layers_under_the_policy_and_refuses_nonsense() -> None:
    job = real_models.gpt2()
    names = [f"transformer.h.{i}" for i in range(4)]
    layers = [{"name": n, "checkpoint": True, "selective": True, "precision": "fp32"} for n in names]
    apply(job.model, Plan({"batch_size": 2, "layers": layers}))
    seen = []
    original = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        seen.append(kwargs.get("context_fn"))
        return original(*args, **kwargs)
    torch.utils.checkpoint.checkpoint = spy
    try:
        job.loss_fn(job.model, job.make_batch(2)).backward()
    finally:
        torch.utils.checkpoint.checkpoint = original
        unapply(job.model)
    assert len(seen) == 4 and all(fn is not None for fn in seen)
    bad = [{"name": names[0], "checkpoint": False, "selective": True, "precision": "fp32"}]
    with pytest.raises(MemfitError, match="selective is true but checkpoint is false"):
        apply(job.model, Plan({"batch_size": 2, "layers": bad}))


def test_ranks_see_the_selective_runs_like_the_others(gpt2_profile) -> None:
    """DDP's buckets and FSDP2's sharding move the selective runs as they move the
    setting and its checkpointed run (memfit.distributed.RUNS)."""
    from memfit.distributed import fsdp_profile, shift_profile

    shifted = shift_profile(gpt2_profile.data, 4096)
    for before, after in zip(gpt2_profile.settings, shifted["settings"]):
        for key in ("checkpointed", "selective"):
            assert after[key]["peak_allocated_bytes"] == before[key]["peak_allocated_bytes"] + 4096
            assert after[key]["layers"][0]["forward"]["start"] == before[key]["layers"][0]["forward"]["start"] + 4096
    sharded = fsdp_profile(gpt2_profile.data, 2)
    for before, after in zip(gpt2_profile.settings, sharded["settings"]):
        moved = [after[key]["fixed_bytes"] - before[key]["fixed_bytes"] for key in ("checkpointed", "selective")]
        assert moved[0] == moved[1] == after["fixed_bytes"] - before["fixed_bytes"] < 0, moved
