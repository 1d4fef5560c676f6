# test_loader.py — the data loader (planner/COMPUTE.md, section 4):
# * memfit.loader.measure_loader times a loader whose per-batch delay is known
#   (time.sleep: the rate can only come out lower than the ideal, so the check is
#   0.5x..1.05x of it), skips its warm-up batches, reads the samples from the
#   batch, and turns a loader that raises or runs out into a MemfitError naming it;
# * Job(loader=...) must be callable;
# * compute.add_loader_check on the sample profile plus a "loader" key, planned
#   with memfit.plan: waits, wait_fraction and the seconds follow exactly from the
#   two rates; `plan --profile` prints the warning (or that the loader keeps up).
from __future__ import annotations

import json
import time
import types

import pytest

from conftest import REPO

from memfit import MemfitError
from memfit.loader import batch_samples, measure_loader, profile_loader

SAMPLE_PROFILE = REPO / "planner" / "examples" / "sample_profile.json"


def _tensor(*shape):
    return types.SimpleNamespace(shape=shape)  # what measure_loader reads of a tensor


def _sleepy(delay, first_delay=None, first_samples=None, count=None):
    """loader(b) -> a generator of batches of b samples, each after `delay` s (the
    first after first_delay s, with first_samples samples); `count` batches, or endless."""

    def loader(b):
        i = 0
        while count is None or i < count:
            time.sleep(first_delay if i == 0 and first_delay is not None else delay)
            n = first_samples if i == 0 and first_samples is not None else b
            yield (_tensor(n, 3), _tensor(n))
            i += 1

    return loader


def test_rate_of_a_loader_with_known_delay():
    # 20 ms per batch of 8: 400 samples/s at best; sleep only ever lengthens.
    r = measure_loader(_sleepy(0.020), 8, batches=10, warmup=1)
    assert r["batch_size"] == 8 and r["batches"] == 10 and r["warmup"] == 1
    assert r["samples"] == 80 and r["samples_from"] == "batch"
    assert r["samples_per_second"] == pytest.approx(r["samples"] / r["seconds"], rel=1e-12)
    assert 0.5 * 400 <= r["samples_per_second"] <= 1.05 * 400, r
    assert r["num_workers"] is None and r["pin_memory"] is None  # a generator has neither


def test_warmup_batches_are_not_counted():
    # The first batch (worker start-up) takes 0.5 s and has 100 samples: neither counts.
    r = measure_loader(_sleepy(0.002, first_delay=0.5, first_samples=100), 8, batches=5, warmup=1)
    assert r["samples"] == 5 * 8
    assert r["seconds"] < 0.45, r


def test_samples_come_from_the_batch_or_the_batch_size():
    assert batch_samples({"mask": 7, "x": [_tensor(), _tensor(5, 2)], "y": _tensor(9)}) == 5  # 0-d skipped
    assert batch_samples([1, 2, 3]) is None
    r = measure_loader(lambda b: ({"x": _tensor(5, 2)} for _ in range(4)), 8, batches=3, warmup=1)
    assert r["samples"] == 15 and r["samples_from"] == "batch"
    r = measure_loader(lambda b: iter([[0] * b] * 4), 8, batches=3, warmup=1)  # no tensors: the size asked
    assert r["samples"] == 24 and r["samples_from"] == "batch_size"


def test_dataloader_attributes_are_recorded():
    class Loader(list):
        num_workers, pin_memory = 4, True

    r = measure_loader(lambda b: Loader([_tensor(b)] * 3), 2, batches=2, warmup=1)
    assert (r["num_workers"], r["pin_memory"], r["samples"]) == (4, True, 4)


def test_a_loader_that_runs_out_or_raises_is_named():
    with pytest.raises(MemfitError, match=r"yielded only 3 batches; measuring needs 7 \(2 warm-up \+ 5 timed\)"):
        measure_loader(_sleepy(0, count=3), 4, batches=5, warmup=2)

    def broken(b):
        yield _tensor(b)
        yield _tensor(b)
        raise ValueError("disk gone")

    with pytest.raises(MemfitError, match=r"batch size 4: getting batch 3 \(timed\) raised ValueError: disk gone"):
        measure_loader(broken, 4, batches=5, warmup=1)
    with pytest.raises(MemfitError, match=r"getting batch 1 \(warm-up\) raised ZeroDivisionError"):
        measure_loader(lambda b: (1 / 0 for _ in range(9)), 4)

    def refuses(b):
        raise RuntimeError("no such file")

    with pytest.raises(MemfitError, match=r"loader\(4\) raised RuntimeError: no such file"):
        measure_loader(refuses, 4)
    with pytest.raises(MemfitError, match="returned int, which is not iterable"):
        measure_loader(lambda b: 3, 4)
    with pytest.raises(MemfitError, match="must be callable"):
        measure_loader([1, 2], 4)
    with pytest.raises(MemfitError, match="batches must be an integer >= 1"):
        measure_loader(_sleepy(0), 4, batches=0)


def test_job_loader_must_be_callable():
    from memfit import Job

    fn = lambda *a: None  # noqa: E731
    with pytest.raises(MemfitError, match="memfit: Job: loader must be callable"):
        Job(model=None, make_batch=fn, loader=[1, 2], loss_fn=fn, optimizer=fn)
    job = Job(model=None, make_batch=fn, loss_fn=fn, optimizer=fn, loader=_sleepy(0, count=9))
    r = profile_loader(job, [2, 4], batches=3, warmup=1)  # what memfit.profile stores: the largest batch
    assert r["batch_size"] == 4 and r["samples"] == 12
    assert profile_loader(Job(model=None, make_batch=fn, loss_fn=fn, optimizer=fn), [2, 4]) is None


def _profile(rate, batch=4):
    data = json.loads(SAMPLE_PROFILE.read_text())
    data["loader"] = {"batch_size": batch, "batches": 16, "warmup": 2, "samples": 64, "seconds": 64 / rate,
                      "samples_per_second": rate, "samples_from": "batch", "num_workers": 2, "pin_memory": False}
    return data


@pytest.mark.needs_lib
def test_add_loader_check_follows_from_the_two_rates():
    import memfit
    from memfit.compute import add_loader_check

    prof = _profile(5.0)
    plan = memfit.plan(prof, "16GiB")
    step = plan.data["throughput_samples_per_second"]
    b, seconds = plan.data["batch_size"], plan.data["predicted_step_seconds"]
    assert step > 5.0  # the sample profile's step runs ~15.8 samples/s at 16 GiB
    out = add_loader_check(plan, memfit.Profile(prof))  # Plan / Profile objects or their dicts
    assert plan.data["loader"] is out
    assert out["waits"] is True and out["samples_per_second"] == 5.0 and out["step_samples_per_second"] == step
    assert out["wait_fraction"] == 1 - 5.0 / step
    assert out["wait_seconds_per_step"] == b / 5.0 - seconds
    assert out["effective_samples_per_second"] == 5.0
    assert (out["planned_batch"], out["measured_batch_size"], out["num_workers"]) == (b, 4, 2)
    assert f"the step at batch {b} would wait for data: the loader delivers 5 samples/s" in plan.table()

    fast = memfit.plan(_profile(10 * step), "16GiB").data
    out = add_loader_check(fast, _profile(10 * step))
    assert out["waits"] is False and out["wait_fraction"] == 0.0 and out["wait_seconds_per_step"] == 0.0
    assert out["effective_samples_per_second"] == step

    bare = json.loads(SAMPLE_PROFILE.read_text())
    plain = memfit.plan(bare, "16GiB").data
    assert add_loader_check(plain, bare) is None and "loader" not in plain
    with pytest.raises(MemfitError, match="samples_per_second is a positive number or null"):
        add_loader_check(plain, dict(bare, loader={"samples_per_second": -1}))
    unmeasured = add_loader_check(plain, dict(bare, loader={"samples_per_second": None}))
    assert unmeasured["waits"] is None and "not compared" in unmeasured["note"]


def test_profile_with_a_loader_matches_the_schema():
    pytest.importorskip("jsonschema")
    from memfit.schema import validate_profile

    validate_profile(_profile(5.0))
    bad = _profile(5.0)
    bad["loader"]["samples_per_second"] = 0
    with pytest.raises(MemfitError, match="loader"):
        validate_profile(bad)


@pytest.mark.needs_lib
@pytest.mark.parametrize("rate,line", [(5.0, "would wait for data: the loader delivers 5 samples/s "
                                             "(measured at batch 4), the step takes "),
                                       (1e4, "the data loader keeps up: 1e+04 samples/s")])
def test_plan_command_prints_the_loader_check(tmp_path, capsys, rate, line):
    from memfit import cli

    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_profile(rate)))
    assert cli.main(["plan", "--profile", str(path), "--budget", "16GiB", "-q"]) == 0
    assert line in capsys.readouterr().out
    assert cli.main(["plan", "--profile", str(path), "--budget", "16GiB", "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loader"]["waits"] is (rate == 5.0)


def test_profile_records_the_loader_at_its_largest_batch():
    import dataclasses

    import torch

    import memfit
    from memfit.models import mlp_job

    job = mlp_job(inputs=32, wide=64)
    seen = []

    def loader(batch_size):
        seen.append(batch_size)
        return ((torch.zeros(batch_size, 32), torch.zeros(batch_size, dtype=torch.long)) for _ in range(40))

    prof = memfit.profile(dataclasses.replace(job, loader=loader), batch_sizes=(2, 4), steps=1, warmup_steps=1, timing_batches=())
    assert seen == [4], seen
    rec = prof.data["loader"]
    assert rec["batch_size"] == 4 and rec["samples_per_second"] > 0 and rec["samples"] == 4 * rec["batches"]
    prof.validate()
