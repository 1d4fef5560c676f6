"""The profile's untraced timing ladder (memfit.timing; planner/PROFILE.md,
"timing") and the plan's calibration to it (planner/PLAN.md, "Step times"):
which batches the ladder times and where it stops, that an out-of-memory ends it
with the cache given back, and that the command line writes the points and the
planner reports them. No test here asserts a measured time against another:
those are the benchmark's (benchmarks/planner/step_times.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_memfit

from memfit import timing
from memfit._lib import MemfitError, MemfitOutOfMemoryError

JOB = f"{Path(__file__).resolve().parent / 'jobs' / 'tiny_mlp.py'}:make"


def test_the_default_ladder_doubles_the_largest_profiled_batch():
    assert timing.ladder([4, 2], None) == [2, 4, 8, 16, 32, 64, 128]
    assert timing.ladder([3], None) == [3, 6, 12, 24, 48, 96]
    assert timing.ladder([2, 4], [16, 8, 16]) == [8, 16]  # as given: sorted, each once
    assert timing.ladder([2, 4], []) == []
    assert timing.ladder([2, 4], None, max_batch=20) == [2, 4, 8, 16]  # the largest batch the job can make
    # The checkpointed step is timed at every batch of the plain ladder.
    assert timing.mode_batches([{"batch_size": b} for b in (8, 2, 4, 16, 32)]) == [2, 4, 8, 16, 32]
    assert timing.mode_batches([{"batch_size": 8}]) == [8] and timing.mode_batches([]) == []
    for bad in ([0], [2, -1], [1.5], [True]):
        with pytest.raises(MemfitError, match="timing_batches must be positive integers"):
            timing.ladder([2, 4], bad)


def test_a_point_is_added_between_neighbours_whose_errors_disagree():
    # (batch, measured, model): +1% at 32 and -5% at 64 get 48; +1% at 16 and 32 get nothing
    assert timing.refinements([(32, 101, 100), (16, 202, 200), (64, 95, 100)]) == [48]
    assert timing.refinements([(16, 1010, 1000), (32, 1014, 1000)]) == []  # within REFINE_ERROR
    # Neighbours at most 1/REFINE_SPACING of the smaller batch apart (or 1) are close enough.
    assert timing.refinements([(32, 101, 100), (36, 95, 100)]) == []
    assert timing.refinements([(32, 101, 100), (37, 95, 100)]) == [34]
    assert timing.refinements([(2, 101, 100), (3, 95, 100)]) == []
    assert timing.refinements([(8, 101, 0), (16, 95, 100)]) == []  # no model peak: no error to compare
    assert timing.refinements([(8, 101, 100)]) == [] and timing.refinements([]) == []


def test_the_checkpointed_step_is_also_timed_past_a_plain_ladder_that_ended_on_memory():
    planned = timing.ladder([2, 4], None)  # 2 .. 128
    ended = [{"batch_size": b, "step_seconds": 0.01} for b in (2, 4, 8, 16)]
    assert timing.mode_extension(ended, planned, True, 4) == [32, 64, 128]
    assert timing.mode_extension(ended, planned, True, 4, max_batch=50) == [32]
    # Not after a slow step, a complete ladder, an explicit one, or none.
    slow = ended[:-1] + [{"batch_size": 16, "step_seconds": timing.LADDER_STEP_SECONDS}]
    assert timing.mode_extension(slow, planned, True, 4) == []
    complete = [{"batch_size": b, "step_seconds": 0.01} for b in planned]
    assert timing.mode_extension(complete, planned, True, 4) == []
    assert timing.mode_extension(ended, [2, 4, 8, 16, 32], False, 4) == []
    assert timing.mode_extension([], planned, True, 4) == []


def _run(batches, seconds, automatic=True, largest=4, capacity=0, peak=lambda b: 0, fail=None, line=None):
    said, released, timed = [], [], []

    def time_steps(b):
        timed.append(b)
        if fail is not None and b >= fail[0]:
            raise fail[1]
        return {"step_seconds": seconds(b), "peak_bytes": peak(b)}

    out = timing.measure_ladder(batches, automatic, largest, capacity, time_steps, said.append,
                                lambda: released.append(True), "fp32", line=line)
    return out, timed, said, released


def test_the_automatic_ladder_stops_after_a_slow_step_beyond_the_profiled_sizes():
    slow = timing.LADDER_STEP_SECONDS
    # A slow step at a profiled size does not stop it; the first slow one above does.
    out, timed, said, _ = _run([2, 4, 8, 16, 32], lambda b: slow * b / 8)
    assert timed == [2, 4, 8] and [e["batch_size"] for e in out] == [2, 4, 8]
    assert all(e["precision"] == "fp32" and e["step_seconds"] > 0 for e in out)
    assert len(said) == 3 and "batch 8" in said[-1]
    # Explicit batches are all timed, however slow.
    out, timed, _, _ = _run([8, 16, 32], lambda b: 10.0, automatic=False)
    assert timed == [8, 16, 32]


def test_a_slow_step_does_not_end_the_ladder_while_the_peak_still_outgrows_the_profiled_line():
    slow = timing.LADDER_STEP_SECONDS
    line = timing.profiled_line([(4, 1400), (2, 1200)])  # the profiled peaks: 1000 + 100 b
    assert line(2) == 1200 and line(8) == 1800
    assert timing.profiled_line([(4, 1400)]) is None
    # A workspace that the small batches did not show: 0 up to 4, then a bump at 8 that shrinks after.
    bump = {2: 0, 4: 0, 8: 400, 16: 300, 32: 200}
    out, timed, _, _ = _run([2, 4, 8, 16, 32], lambda b: slow, peak=lambda b: 1000 + 100 * b + bump[b], line=line)
    assert timed == [2, 4, 8, 16]  # 4: none past the profiled yet; 8 rose over 4; 16 fell: it ends there
    # A term that keeps growing with the batch: the ladder runs to its end.
    out, timed, _, _ = _run([2, 4, 8, 16, 32], lambda b: slow, peak=lambda b: 1000 + 100 * b + 50 * max(0, b - 4),
                            line=line)
    assert timed == [2, 4, 8, 16, 32]
    # A rise below LADDER_ERROR_RISE of the peak is noise: the slow step ends it.
    out, timed, _, _ = _run([2, 4, 8, 16], lambda b: slow, peak=lambda b: 10 ** 6 + 100 * b + (b > 4), line=line)
    assert timed == [2, 4, 8]
    # Without the line (one profiled batch), the first slow step ends it.
    out, timed, _, _ = _run([2, 4, 8, 16], lambda b: slow, peak=lambda b: 1000 + 100 * b + bump[b])
    assert timed == [2, 4]


def test_the_automatic_ladder_stops_before_a_batch_that_would_need_half_the_memory():
    capacity = 1000
    # Batch 8 peaks at 260 bytes: twice that is more than half of 1000, so 16 is not tried.
    out, timed, _, _ = _run([2, 4, 8, 16], lambda b: 0.01, capacity=capacity, peak=lambda b: 30 * b + 20)
    assert timed == [2, 4, 8]
    # Each entry keeps its peak: the ladder check's (planner/PLAN.md).
    assert [e["peak_allocated_bytes"] for e in out] == [80, 140, 260]


def test_an_out_of_memory_ends_the_ladder_and_gives_the_cache_back():
    oom = MemfitOutOfMemoryError("memfit: CPU out of memory. Tried to allocate 1 GiB")
    out, timed, said, released = _run([2, 4, 8, 16], lambda b: 0.01, fail=(8, oom))
    assert [e["batch_size"] for e in out] == [2, 4] and timed == [2, 4, 8]
    assert released == [True] and "batch 8 does not fit" in said[-1] and "ends at 4" in said[-1]
    # Any other error is the caller's.
    with pytest.raises(ValueError):
        _run([2, 4], lambda b: 0.01, fail=(4, ValueError("not an OOM")))


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One profile of the tiny MLP with two timing batches (in its own process,
    as a user runs it), its plan and a profile without timing."""
    d = tmp_path_factory.mktemp("timing")
    common = ["--job", JOB, "--batch-sizes", "2,4", "--steps", "2", "--warmup-steps", "1", "--no-selective"]
    done = run_memfit("profile", *common, "--timing-batches", "16,8", "--out", str(d / "p.json"))
    assert done.returncode == 0, done.stderr
    none = run_memfit("profile", *common, "--timing-batches", "none", "--out", str(d / "none.json"), "-q")
    assert none.returncode == 0, none.stderr
    return d, done.stderr


def test_the_profile_holds_the_timed_batches_and_the_plan_reports_them(profiled):
    d, stderr = profiled
    prof = json.loads((d / "p.json").read_text())
    assert [(e["precision"], e.get("mode", "plain"), e["batch_size"]) for e in prof["timing"]] == \
        [("fp32", "plain", 8), ("fp32", "plain", 16), ("fp32", "checkpointed", 8), ("fp32", "checkpointed", 16)]
    assert all(e["step_seconds"] > 0 for e in prof["timing"])
    assert "timing fp32: batch 8:" in stderr and "timing fp32: batch 16:" in stderr
    assert "timing fp32, every layer checkpointed: batch 16:" in stderr
    done = run_memfit("plan", "--profile", str(d / "p.json"), "--budget", "64MiB", "--json", "-q")
    assert done.returncode == 0, done.stderr
    cal = json.loads(done.stdout)["time_calibration"]
    assert [(p["mode"], p["batch_size"]) for p in cal["points"]] == \
        [(e.get("mode", "plain"), e["batch_size"]) for e in prof["timing"]]
    assert [p["measured_step_seconds"] for p in cal["points"]] == \
        pytest.approx([e["step_seconds"] for e in prof["timing"]], rel=1e-12)
    assert all(p["traced_model_step_seconds"] >= 0 for p in cal["points"] if p["mode"] == "plain")
    assert cal["plain_step_seconds"]["fp32"] > 0
    # The ladder check: each entry's peak against the model's.
    assert all(e["peak_allocated_bytes"] > 0 for e in prof["timing"])
    plan = json.loads(done.stdout)
    assert [(c["mode"], c["batch_size"], c["measured"]) for c in plan["ladder_checks"]] == \
        [(e.get("mode", "plain"), e["batch_size"], e["peak_allocated_bytes"]) for e in prof["timing"]]
    assert all(c["predicted"] > 0 and c["error"] < 0.25 for c in plan["ladder_checks"]), plan["ladder_checks"]
    assert plan["ladder_correction_bytes"] >= 0


def test_timing_none_measures_nothing_and_the_plan_keeps_the_fitted_times(profiled):
    d, _ = profiled
    prof = json.loads((d / "none.json").read_text())
    assert prof["timing"] == []
    done = run_memfit("plan", "--profile", str(d / "none.json"), "--budget", "64MiB", "--json", "-q")
    assert done.returncode == 0, done.stderr
    assert "time_calibration" not in json.loads(done.stdout)


def test_a_timing_batch_that_does_not_fit_ends_the_ladder_and_the_profile_is_written(tmp_path):
    out = tmp_path / "p.json"
    done = run_memfit("profile", "--job", JOB, "--batch-sizes", "2,4", "--steps", "1", "--warmup-steps", "1",
                      "--no-selective", "--capacity", "64MiB", "--timing-batches", "8,100000000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "batch 100000000 does not fit the device; the ladder ends at 8" in done.stderr
    assert [e["batch_size"] for e in json.loads(out.read_text())["timing"] if "mode" not in e] == [8]


def test_bad_timing_batches_are_refused_by_name(tmp_path):
    done = run_memfit("profile", "--job", JOB, "--timing-batches", "8,x", "--out", str(tmp_path / "p.json"))
    assert done.returncode == 2 and "--timing-batches '8,x'" in done.stderr, done.stderr


def test_the_profile_times_the_checkpointed_step_past_a_plain_ladder_that_ended_on_memory(monkeypatch):
    """In process, with the plain ladder cut at batch 8 as a memory stop would cut
    it: the checkpointed step is timed at its three batches and then past 8."""
    import sys

    import memfit
    sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
    import tiny_mlp

    original = timing.measure_ladder

    def cut(batches, automatic, largest, capacity, time_steps, say, release, precision, mode="plain", line=None):
        if mode == "plain":
            batches = [b for b in batches if b <= 8]
        return original(batches, automatic, largest, capacity, time_steps, say, release, precision, mode, line)

    monkeypatch.setattr(timing, "measure_ladder", cut)
    monkeypatch.setattr(timing, "REFINE_POINTS", 0)  # the ladder's own points (refinements: the tests below)
    prof = memfit.profile(tiny_mlp.make(), batch_sizes=(2, 4), steps=1, warmup_steps=1, selective=False,
                          timing_max_batch=32)
    points = [(e.get("mode", "plain"), e["batch_size"]) for e in prof.data["timing"]]
    assert points == [("plain", 2), ("plain", 4), ("plain", 8),
                      ("checkpointed", 2), ("checkpointed", 4), ("checkpointed", 8),
                      ("checkpointed", 16), ("checkpointed", 32)], points
    assert memfit.plan(prof, "64MiB").data["time_calibration"]["points"][-1]["batch_size"] == 32


def _wide_job():
    """An MLP whose memory model is exact on the ladder (the errors the test adds are its only ones)."""
    import torch

    import memfit
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 8))
    return memfit.Job(model=model, make_batch=lambda b: (torch.randn(b, 64), torch.randint(0, 8, (b,))),
                      loss_fn=lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1]),
                      optimizer=lambda params: torch.optim.SGD(params, lr=1e-3))


def test_the_default_ladder_is_denser_where_the_error_changes_and_the_plan_holds_what_it_found(monkeypatch):
    """Every measured peak is scaled by +1% up to batch 32, +3% from 33 to 56 and
    -5% past it, a hump between the ladder's points 32 and 64 as an HF ViT's
    bf16 step has (PLAN.md, "The ladder check"): the default ladder times batches
    between 32 and 64 and the plan at 44 corrects by the hump's 3%; an explicit
    ladder adds none, and holds 32's 1% there."""
    import memfit
    original = timing.measure_ladder

    def hump(b):
        return 0.01 if b <= 32 else 0.03 if b <= 56 else -0.05

    def scaled(batches, automatic, largest, capacity, time_steps, say, release, precision, mode="plain", line=None):
        got = original(batches, automatic, largest, capacity, time_steps, say, release, precision, mode, line)
        for e in got:
            e["peak_allocated_bytes"] = round(e["peak_allocated_bytes"] * (1 + hump(e["batch_size"])))
        return got

    monkeypatch.setattr(timing, "measure_ladder", scaled)
    ladder = timing.ladder([8, 16], None, max_batch=128)
    said = []
    for batches in (None, ladder):
        prof = memfit.profile(_wide_job(), batch_sizes=(8, 16), steps=1, warmup_steps=1, selective=False,
                              timing_max_batch=128, timing_batches=batches, progress=said.append)
        points = {(e.get("mode", "plain"), e["batch_size"]) for e in prof.data["timing"]}
        plan = memfit.plan(prof, "64MiB", max_batch=44).data
        assert plan["batch_size"] == 44
        share = plan["ladder_correction_bytes"] / plan["predicted_peak_bytes"]  # that of the model's peak
        if batches is None:
            for mode in ("plain", "checkpointed"):
                added = sorted(b for m, b in points if m == mode and b not in ladder)
                assert added and all(32 < b < 64 for b in added), (mode, added)
            assert share == pytest.approx(0.03, abs=0.003), plan["ladder_checks"]
            assert any("the model's error changes between points; also at 48" in s for s in said), said
        else:
            assert points == {(m, b) for m in ("plain", "checkpointed") for b in ladder}
            assert share == pytest.approx(0.01, abs=0.003), plan["ladder_checks"]
