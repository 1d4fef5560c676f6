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


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "job.py").write_text(JOB)
    job = f"{d / 'job.py'}:job"
    r = _memfit("profile", "--job", job, "--batch-sizes", "4,8", "--steps", "1", "--warmup-steps", "1",
                "--out", str(d / "profile.json"), "-q")
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
    d = planned["dir"]
    r = _memfit("verify", "--job", planned["job"], "--plan", str(d / "plan.json"), "--nproc", "2",
                "--steps", "1", "--json", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["predicted_peak_bytes"] == planned["plan"]["predicted_peak_bytes"]
    assert [x["rank"] for x in result["ranks"]] == [0, 1]
    for x in result["ranks"]:
        assert not x["oom"] and x["error"] is None, x
        assert abs(x["measured_peak_bytes"] - result["predicted_peak_bytes"]) <= 0.05 * result["predicted_peak_bytes"], x
        # The buckets are really there: the one-process prediction would be short by them.
        assert x["measured_peak_bytes"] > planned["plan1"]["predicted_peak_bytes"]
