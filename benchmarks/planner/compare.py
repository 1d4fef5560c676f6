#!/usr/bin/env python3
# compare.py — memfit's planner against what users pick instead (fixed checkpoint policies found by
# bisection over real runs, Accelerate- and Lightning-style batch finders), on the built-in GPT/CNN/MLP
# jobs and the same budgets, in one run; writes benchmarks/results/planner-DATE.{md,json} (vmm off:
# planner-DATE-vmm-off.*), and with --summarize-vmm DATE the two runs side by side. See README.md.
"""Usage: python3 benchmarks/planner/compare.py [--quick] [--vmm on|off] [--out-dir DIR] [--date YYYY-MM-DD]
       python3 benchmarks/planner/compare.py --summarize-vmm DATE [--quick] [--out-dir DIR]

Every trial is a real training run in this process on CPU with memfit as PyTorch's
CPU allocator and the budget as its capacity (memfit.install('cpu', capacity=...)),
a fresh allocator per trial; going past the capacity raises torch.OutOfMemoryError
and the search goes on."""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("MEMFIT_BUILD_DIR", str(REPO / "build"))
sys.path.insert(0, str(REPO / "bindings" / "python"))

import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

import memfit  # noqa: E402
from memfit.job import load_job  # noqa: E402
from memfit.models import CNN, GPT, MLP  # noqa: E402
from memfit.planning import Plan, apply, plan, verify  # noqa: E402
from memfit.profiling import profile  # noqa: E402
from memfit.tracking import move_parameters_into_memfit  # noqa: E402

MiB = 1 << 20

# (job, budget, batch sizes profiled, primary). The primary cases are the end-to-end
# test's (tests/python/test_plan_e2e.py); the others are a second budget per model.
CASES = [
    ("memfit.models:gpt_job", "96MiB", (2, 4), True),
    ("memfit.models:gpt_job", "160MiB", (2, 4), False),
    ("memfit.models:cnn_job", "64MiB", (4, 8), True),
    ("memfit.models:cnn_job", "128MiB", (4, 8), False),
    ("memfit.models:mlp_job", "56MiB", (4, 8), True),
    ("memfit.models:mlp_job", "112MiB", (4, 8), False),
]

ACCELERATE_START = 512  # starting_batch_size given to the Accelerate-like finder
ACCELERATE_FACTOR = 0.9  # accelerate.utils.find_executable_batch_size: batch_size = int(batch_size * 0.9)
LIGHTNING_INIT = 2  # BatchSizeFinder(mode="binsearch", init_val=2, max_trials=25, steps_per_trial=3)
LIGHTNING_MAX_TRIALS = 25
LIGHTNING_STEPS = 3
# Acceptance of memfit's plan: batch within 3% of its family's true largest (BATCH_FRACTION), the same plan
# at 1.03x its batch must not fit (PLUS3_NUM / 100), reserved / allocated at most RESERVED_RATIO_MAX.
BATCH_FRACTION = 0.97
PLUS3_NUM = 103
RESERVED_RATIO_MAX = 1.02


# ------------------------------------------------------------------ trials


class TrialTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise TrialTimeout()


class Runner:
    """Runs real training steps, one fresh memfit allocator per trial, and keeps the count."""

    def __init__(self, trial_cap_s: float) -> None:
        self.trial_cap_s = trial_cap_s
        self.trials = 0
        self.leaks: List[Dict[str, Any]] = []

    def trial(self, job: str, batch: int, capacity: Optional[int], policy: Optional[Callable[[torch.nn.Module], None]],
              warmup: int, steps: int) -> Dict[str, Any]:
        """warmup + steps training steps at `batch`; `policy(model)` modifies the model
        (checkpointing) before the optimizer is made. OOM, timeout or another error end
        the trial; everything it made is freed before it returns."""
        gc.collect()
        alloc = memfit.install("cpu", capacity=capacity) if capacity else memfit.install("cpu")
        result: Dict[str, Any] = {"batch": batch, "ok": False, "oom": False, "timeout": False, "error": None}
        self.trials += 1
        t0 = time.perf_counter()
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.trial_cap_s)
        times: List[float] = []
        try:
            _train(job, batch, policy, warmup, steps, alloc, times)
            result["ok"] = True
        except torch.OutOfMemoryError:
            result["oom"] = True
        except TrialTimeout:
            result["timeout"] = True
        except Exception as e:  # noqa: BLE001 - recorded and reported, the search goes on
            if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
                result["oom"] = True
            else:
                result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        gc.collect()
        stats = alloc.stats()
        result["peak_allocated_bytes"] = stats["allocated_bytes"]["peak"]
        result["peak_reserved_bytes"] = stats["reserved_bytes"]["peak"]
        result["reserved_over_allocated"] = (result["peak_reserved_bytes"] / result["peak_allocated_bytes"]
                                             if result["peak_allocated_bytes"] else None)
        result["wall_seconds"] = time.perf_counter() - t0
        result["step_seconds"] = statistics.median(times) if times else None
        result["step_seconds_all"] = times
        leaked = alloc.allocated()
        if leaked:
            self.leaks.append({"batch": batch, "bytes": leaked})
        alloc.empty_cache()
        return result


def _train(job_spec: str, batch_size: int, policy: Optional[Callable[[torch.nn.Module], None]], warmup: int,
           steps: int, alloc: Any, times: List[float]) -> None:
    job = load_job(job_spec)  # built after the install: parameters live in this trial's allocator
    model = job.model
    move_parameters_into_memfit(model, alloc)
    if policy is not None:
        policy(model)
    optimizer = job.optimizer(model.parameters())
    for i in range(warmup + steps):
        optimizer.zero_grad(set_to_none=True)
        batch = job.make_batch(batch_size)
        t0 = time.perf_counter()
        loss = job.loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        del loss, batch


# ---------------------------------------------------------------- policies


def checkpoint_every_layer(layer_names: List[str]) -> Callable[[torch.nn.Module], None]:
    layers = [{"name": n, "checkpoint": True, "precision": "fp32"} for n in layer_names]
    the_plan = Plan({"format": "memfit-plan", "version": 1, "batch_size": 1, "layers": layers})
    return lambda model: apply(model, the_plan)


def memfit_plan_policy(the_plan: Plan) -> Callable[[torch.nn.Module], None]:
    return lambda model: apply(model, the_plan)


def _sqrt_parts(model: torch.nn.Module) -> Tuple[List[Tuple[str, torch.nn.Module]], Callable, Callable]:
    """(the chain of blocks, what runs before it, what runs after it) for each built-in model."""
    if isinstance(model, GPT):
        return ([(f"blocks.{i}", b) for i, b in enumerate(model.blocks)], model.embed,
                lambda x: model.head(model.ln_f(x)))
    if isinstance(model, CNN):
        return ([(n, getattr(model, n)) for n in ("stem", "stage1", "stage2", "stage3")], lambda x: x,
                lambda x: model.fc(torch.flatten(model.pool(x), 1)))
    if isinstance(model, MLP):
        return [(f"layers.{i}", m) for i, m in enumerate(model.layers)], lambda x: x, lambda x: x
    raise TypeError(f"no sqrt(n) adapter for {type(model).__name__}")


def sqrt_segments_layout(model: torch.nn.Module) -> Dict[str, Any]:
    """Which blocks checkpoint_sequential checkpoints: segments - 1 chunks of n // segments
    blocks, each one checkpoint; the last chunk runs without one (its backward follows at once)."""
    chain, _, _ = _sqrt_parts(model)
    n = len(chain)
    segments = max(1, round(math.sqrt(n)))
    size = n // segments
    names = [name for name, _ in chain]
    groups = [names[s:s + size] for s in range(0, size * (segments - 1), size)]
    return {"blocks": n, "segments": segments, "checkpointed": groups, "plain": names[size * (segments - 1):]}


def sqrt_segments_policy(model: torch.nn.Module) -> None:
    """Chen et al.'s sqrt(n) checkpointing through torch.utils.checkpoint.checkpoint_sequential."""
    chain, before, after = _sqrt_parts(model)
    modules = [m for _, m in chain]
    segments = max(1, round(math.sqrt(len(modules))))

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = before(x)
        if torch.is_grad_enabled() and segments > 1:
            x = torch.utils.checkpoint.checkpoint_sequential(modules, segments, x, use_reentrant=False)
        else:
            for m in modules:
                x = m(x)
        return after(x)

    model.forward = forward  # type: ignore[method-assign]


# --------------------------------------------------------------- searches


def bisect_largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest b in (lo, hi) with fits(b), given that lo fits (0: none known) and hi fails."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _summary(log: List[Dict[str, Any]], t0: float) -> Dict[str, Any]:
    return {
        "trials": sum(1 for r in log if r.get("ran", True)),
        "ooms": sum(1 for r in log if r.get("oom")),
        "timeouts": sum(1 for r in log if r.get("timeout")),
        "errors": [r["error"] for r in log if r.get("error")],
        "wall_seconds": time.perf_counter() - t0,
        "log": [_slim(r) for r in log],
    }


def _slim(r: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("batch", "ran", "ok", "oom", "timeout", "error", "peak_allocated_bytes", "peak_reserved_bytes",
            "reserved_over_allocated", "wall_seconds", "predicted_peak_bytes", "prediction_error_percent",
            "predicted_reserved_bytes", "reserved_prediction_error_percent", "note")
    return {k: r[k] for k in keys if k in r}


def fixed_policy_search(runner: Runner, job: str, budget: int, policy, upper: int) -> Dict[str, Any]:
    """Largest batch in 1..upper at which 1 warm-up + 1 measured step run under the budget."""
    log: List[Dict[str, Any]] = []
    t0 = time.perf_counter()

    def fits(b: int) -> bool:
        r = runner.trial(job, b, budget, policy, warmup=1, steps=1)
        log.append(r)
        return r["ok"]

    best = bisect_largest(fits, 0, upper + 1)
    out = _summary(log, t0)
    out.update(batch=best, upper_bound=upper, bound_hit=best == upper)
    return out


def accelerate_like(runner: Runner, job: str, budget: int) -> Dict[str, Any]:
    """accelerate.find_executable_batch_size(starting_batch_size=512): run the training
    function at the batch; on an OOM, batch = int(batch * 0.9) and run again; the first
    batch that runs is the answer. The 'training function' here is 1 warm-up + 1 step."""
    log: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    b, found = ACCELERATE_START, 0
    while b > 0:
        r = runner.trial(job, b, budget, None, warmup=1, steps=1)
        log.append(r)
        if r["ok"]:
            found = b
            break
        if not r["oom"]:  # Accelerate re-raises anything that is not an OOM
            break
        b = int(b * ACCELERATE_FACTOR)
    out = _summary(log, t0)
    out.update(batch=found, start=ACCELERATE_START, factor=ACCELERATE_FACTOR)
    return out


def lightning_binsearch(runner: Runner, job: str, budget: int) -> Dict[str, Any]:
    """Lightning's BatchSizeFinder(mode='binsearch') / _run_binary_scaling: from init_val,
    double after each success until an OOM, then bisect between the last success (low)
    and the failure (high); stop when high - low <= 1 or after max_trials successes.
    steps_per_trial=3 training steps per trial, as Lightning's default."""
    log: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    low, high, count, new_size = 1, None, 0, LIGHTNING_INIT
    while True:
        r = runner.trial(job, new_size, budget, None, warmup=1, steps=LIGHTNING_STEPS - 1)
        log.append(r)
        if r["ok"]:
            count += 1
            if count > LIGHTNING_MAX_TRIALS:
                break
            low = new_size
            if high:
                if high - low <= 1:
                    break
                new_size = (high + low) // 2
            else:
                new_size = new_size * 2
        elif r["oom"]:
            high = new_size
            new_size = (high + low) // 2
            if high - low <= 1:
                break
        else:  # Lightning re-raises anything that is not an OOM
            break
    out = _summary(log, t0)
    out.update(batch=new_size, init_val=LIGHTNING_INIT, max_trials=LIGHTNING_MAX_TRIALS,
               steps_per_trial=LIGHTNING_STEPS,
               answer_was_run=any(x["batch"] == new_size and x["ok"] for x in log))
    return out


def memfit_family_search(runner: Runner, job: str, budget: int, profile_data: Dict[str, Any], lo: int,
                         upper: int) -> Dict[str, Any]:
    """The true largest batch of memfit's plan family: candidate b runs
    memfit.plan(profile, budget, max_batch=b, headroom=0.0) when the planner's answer is
    batch b (its fastest plan that the model says fits at b); otherwise b fails unrun."""
    log: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    plans: Dict[int, Plan] = {}

    def fits(b: int) -> bool:
        p = plan(profile_data, budget, max_batch=b, headroom=0.0)
        if p.batch_size != b:
            log.append({"batch": b, "ran": False, "ok": False, "note": f"planner: largest fit is {p.batch_size}"})
            return False
        r = runner.trial(job, b, budget, memfit_plan_policy(p), warmup=1, steps=1)
        r["predicted_peak_bytes"] = p.data["predicted_peak_bytes"]
        r["predicted_reserved_bytes"] = p.data.get("predicted_reserved_bytes")
        if r["ok"]:
            r["prediction_error_percent"] = 100.0 * (r["peak_allocated_bytes"] / p.data["predicted_peak_bytes"] - 1)
            if r["predicted_reserved_bytes"]:
                r["reserved_prediction_error_percent"] = 100.0 * (r["peak_reserved_bytes"]
                                                                  / r["predicted_reserved_bytes"] - 1)
        r["note"] = "checkpoint: " + (",".join(l["name"] for l in p.layers if l["checkpoint"]) or "none")
        log.append(r)
        if r["ok"]:
            plans[b] = p
        return r["ok"]

    best = bisect_largest(fits, lo, upper + 1) if upper > lo else lo
    out = _summary(log, t0)
    out.update(batch=best, lower_start=lo, upper_bound=upper, bound_hit=best == upper and upper > lo,
               rejected_by_model=sum(1 for r in log if r.get("ran") is False))
    if best in plans:
        p = plans[best]
        out["plan"] = {"checkpointed": [l["name"] for l in p.layers if l["checkpoint"]],
                       "predicted_peak_bytes": p.data["predicted_peak_bytes"],
                       "predicted_reserved_bytes": p.data.get("predicted_reserved_bytes"),
                       "recompute_overhead_percent": p.data["recompute_overhead_percent"]}
    return out


# ----------------------------------------------------------------- timing


class Timer:
    """Step times at each answer: every (policy, batch) registered is run `rounds` times
    under the budget (1 warm-up + `steps` measured steps each), interleaved round by round
    with the unmodified model at the same batch and no capacity limit (the reference for
    the recompute overhead), so that the machine's drift hits all of them alike. The runs
    at an answer also re-check it: an OOM there is counted."""

    def __init__(self, runner: Runner, job: str, budget: int, rounds: int, steps: int) -> None:
        self.runner, self.job, self.budget, self.rounds, self.steps = runner, job, budget, rounds, steps
        self.configs: Dict[Tuple[str, int], Dict[str, Any]] = {}

    def add(self, key: str, policy, batch: int, reference: bool) -> Tuple[str, int]:
        if batch >= 1 and (key, batch) not in self.configs:
            self.configs[(key, batch)] = {"policy": policy, "capacity": self.budget, "times": [], "runs": 0,
                                          "ooms": 0, "peaks": []}
            if reference and ("reference", batch) not in self.configs:
                self.configs[("reference", batch)] = {"policy": None, "capacity": None, "times": [], "runs": 0,
                                                      "ooms": 0, "peaks": []}
        return key, batch

    def run(self, only: Optional[List[Tuple[str, int]]] = None) -> None:
        """`rounds` runs of each configuration not run yet (of `only` and their references)."""
        todo = [k for k, c in self.configs.items() if c["runs"] == 0
                and (only is None or k in only or (k[0] == "reference" and any(o[1] == k[1] for o in only)))]
        for _ in range(self.rounds):
            for key in todo:
                c = self.configs[key]
                r = self.runner.trial(self.job, key[1], c["capacity"], c["policy"], warmup=1, steps=self.steps)
                c["runs"] += 1
                c["ooms"] += 1 if r["oom"] else 0
                c["times"] += r["step_seconds_all"]
                c["peaks"].append((r["peak_allocated_bytes"], r["peak_reserved_bytes"]))

    def confirm(self, key: str, policy_at: Callable[[int], Any], batch: int, reference: bool,
                max_walk: int = 16) -> Dict[str, Any]:
        """From `batch` down, the first batch whose `rounds` re-runs all fit (at most
        `max_walk` batches below the answer): what the answer is worth in practice."""
        walk = []
        b = batch
        while b >= 1 and batch - b <= max_walk:
            k = self.add(key, policy_at(b), b, reference)
            self.run([k])
            c = self.configs[k]
            walk.append({"batch": b, "runs": c["runs"], "ooms": c["ooms"]})
            if c["ooms"] == 0:
                return {"confirmed_batch": b, "walk": walk}
            b -= 1
        return {"confirmed_batch": None, "walk": walk}

    def result(self, key: str, batch: int) -> Dict[str, Any]:
        c = self.configs.get((key, batch))
        if c is None:
            return {"batch": batch, "step_seconds": None}
        t = statistics.median(c["times"]) if c["times"] else None
        out: Dict[str, Any] = {
            "batch": batch, "runs": c["runs"], "ooms": c["ooms"], "step_seconds": t,
            "step_seconds_min": min(c["times"]) if c["times"] else None, "steps_measured": len(c["times"]),
            "samples_per_second": batch / t if t else None,
            "peak_allocated_bytes": max(p[0] for p in c["peaks"]), "peak_reserved_bytes": max(p[1] for p in c["peaks"]),
            "reserved_over_allocated_max": max((p[1] / p[0] for p in c["peaks"] if p[0]), default=None),
        }
        ref = self.configs.get(("reference", batch))
        if key == "none":
            out["measured_overhead_percent"] = 0.0
        elif ref is not None and ref["times"] and t:
            r = statistics.median(ref["times"])
            out["reference_step_seconds"] = r
            out["measured_overhead_percent"] = 100.0 * (t / r - 1.0)
        return out


# ------------------------------------------------------------------- a case


def run_case(runner: Runner, job: str, budget_text: str, sizes: Tuple[int, ...], timing_rounds: int,
             timing_steps: int, endurance_steps: int, log: Callable[[str], None]) -> Dict[str, Any]:
    budget = memfit.parse_size(budget_text)
    name = job.split(":")[1]
    case: Dict[str, Any] = {"job": job, "budget": budget_text, "budget_bytes": budget,
                            "profile_batch_sizes": list(sizes)}

    # 1. memfit: profile, plan, verify.
    gc.collect()
    memfit.install("cpu")  # a fresh allocator with no capacity for profiling
    t0 = time.perf_counter()
    prof = profile(job, device="cpu", batch_sizes=sizes, steps=2, warmup_steps=2)
    profile_s = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    the_plan = plan(prof, budget)
    plan_s = time.perf_counter() - t0
    d = the_plan.data
    layer_names = [l["name"] for l in prof.settings[0]["layers"]]
    gc.collect()
    t0 = time.perf_counter()
    v = verify(load_job(job), the_plan, budget, device="cpu", steps=2, warmup_steps=1)
    verify_s = time.perf_counter() - t0
    gc.collect()
    verify_alloc = memfit.current()
    verify_leak = verify_alloc.allocated() if verify_alloc is not None else 0
    verify_granule = verify_alloc.granule() if verify_alloc is not None else None
    if verify_alloc is not None:
        verify_alloc.empty_cache()
    runner.trials += 1
    m: Dict[str, Any] = {
        "profile_seconds": profile_s, "plan_seconds": plan_s, "planner_seconds": d["planning_seconds"],
        "answer_seconds": profile_s + plan_s, "verify_seconds": verify_s,
        "batch": the_plan.batch_size, "checkpointed": [l["name"] for l in the_plan.layers if l["checkpoint"]],
        "precisions": sorted({l["precision"] for l in the_plan.layers}),
        "predicted_peak_bytes": d["predicted_peak_bytes"], "usable_bytes": d["usable_bytes"],
        "predicted_reserved_bytes": d.get("predicted_reserved_bytes"),
        "usable_allocated_bytes": d.get("usable_allocated_bytes"), "reserve_model": d.get("reserve_model"),
        "headroom": d["headroom"], "headroom_rule": d.get("headroom_rule"),
        "predicted_step_seconds": d["predicted_step_seconds"],
        "predicted_recompute_overhead_percent": d["recompute_overhead_percent"],
        "model_error": d["model_error"], "model_error_reserved": d.get("model_error_reserved"),
        "exact": d["exact"], "monotone": d["monotone"],
        "planner_baselines": d["baselines"], "search": d["search"],
        "verify": {k: v.get(k) for k in ("batch_size", "oom", "error", "measured_peak_bytes", "predicted_peak_bytes",
                                         "measured_peak_reserved_bytes", "predicted_reserved_bytes", "error_percent",
                                         "reserved_error_percent", "step_seconds", "steps", "warmup_steps")},
        "verify_leaked_bytes": verify_leak, "verify_granule_bytes": verify_granule,
        "ooms": 1 if v["oom"] else 0,
    }
    if v["measured_peak_bytes"]:
        m["verify"]["reserved_over_allocated"] = v["measured_peak_reserved_bytes"] / v["measured_peak_bytes"]
    case["memfit"] = m
    log(f"[{name} {budget_text}] memfit: batch {m['batch']} (profile {profile_s:.2f} s, plan {plan_s * 1e3:.1f} ms), "
        f"checkpoint {m['checkpointed'] or 'none'}, headroom {m['headroom']} ({m['headroom_rule']}), verify "
        f"oom={v['oom']} error {_f(v['error_percent'], '{:+.3f}')}%, reserved/allocated "
        f"{_f(m['verify'].get('reserved_over_allocated'), '{:.4f}')}, reserved error "
        f"{_f(v.get('reserved_error_percent'), '{:+.3f}')}%")

    planned = the_plan.batch_size
    upper = max(4 * planned, 8)
    case["search_upper_bound"] = upper
    policies = {
        "no_checkpoint": ("none", None),
        "every_layer": ("every_layer", checkpoint_every_layer(layer_names)),
        "sqrt_n": ("sqrt_n", sqrt_segments_policy),
    }
    # 2. Fixed policies, bisection over real runs.
    case["policies"] = {}
    for key, (tkey, pol) in policies.items():
        res = fixed_policy_search(runner, job, budget, pol, upper)
        if key == "sqrt_n":
            res["layout"] = sqrt_segments_layout(load_job(job).model)
        case["policies"][key] = res
        log(f"[{name} {budget_text}] {key}: batch {res['batch']} ({res['trials']} trials, {res['ooms']} OOMs, "
            f"{res['wall_seconds']:.1f} s)")
    # 3. Trial-and-error finders on the unmodified model.
    case["finders"] = {"accelerate_like": accelerate_like(runner, job, budget),
                       "lightning_binsearch": lightning_binsearch(runner, job, budget)}
    for key, res in case["finders"].items():
        log(f"[{name} {budget_text}] {key}: batch {res['batch']} ({res['trials']} trials, {res['ooms']} OOMs, "
            f"{res['wall_seconds']:.1f} s)")
    # 4. The true largest batch of memfit's plan family.
    loose = plan(prof, budget, headroom=0.0)
    fam = memfit_family_search(runner, job, budget, prof.data, planned if not v["oom"] else 0,
                               min(upper, loose.batch_size))
    fam["headroom0_model_batch"] = loose.batch_size
    case["memfit_family"] = fam
    log(f"[{name} {budget_text}] memfit family true largest: {fam['batch']} (model at headroom 0: "
        f"{loose.batch_size}; {fam['trials']} runs, {fam['rejected_by_model']} rejected unrun, {fam['ooms']} OOMs)")

    # Re-runs and step times at every answer, interleaved round by round; an answer whose
    # re-runs OOM is walked down to the largest batch whose re-runs all fit.
    timer = Timer(runner, job, budget, timing_rounds, timing_steps)
    memfit_at = lambda b: memfit_plan_policy(the_plan)  # noqa: E731 - memfit's answer is its one plan
    family_at = lambda b: memfit_plan_policy(plan(prof, budget, max_batch=b, headroom=0.0))  # noqa: E731
    entries: List[Tuple[Dict[str, Any], str, Callable[[int], Any], bool]] = [
        (m, "memfit", memfit_at, bool(m["checkpointed"])),
        (fam, "memfit_family", family_at, True),
    ]
    for key, (tkey, pol) in policies.items():
        entries.append((case["policies"][key], tkey, (lambda pol: lambda b: pol)(pol), pol is not None))
    for key, res in case["finders"].items():
        entries.append((res, "none", lambda b: None, False))
    t0 = time.perf_counter()
    for entry, key, policy_at, ref in entries:
        if entry["batch"] >= 1:
            timer.add(key, policy_at(entry["batch"]), entry["batch"], ref)
    timer.run()
    for entry, key, policy_at, ref in entries:
        if entry["batch"] < 1:
            entry["answer_reruns"], entry["confirmed_batch"], entry["timing"] = None, None, {"step_seconds": None}
            continue
        answer = timer.result(key, entry["batch"])
        entry["answer_reruns"] = {"runs": answer["runs"], "ooms": answer["ooms"],
                                  "peak_allocated_bytes": answer["peak_allocated_bytes"],
                                  "peak_reserved_bytes": answer["peak_reserved_bytes"],
                                  "reserved_over_allocated_max": answer["reserved_over_allocated_max"]}
        conf = timer.confirm(key, policy_at, entry["batch"], ref)
        entry["confirmed_batch"], entry["confirm_walk"] = conf["confirmed_batch"], conf["walk"]
        entry["timing"] = timer.result(key, conf["confirmed_batch"]) if conf["confirmed_batch"] else answer
    case["timing_seconds"] = time.perf_counter() - t0
    if not m["checkpointed"]:
        m["timing"]["measured_overhead_percent"] = 0.0
    if fam.get("confirmed_batch") == planned or ("plan" not in fam and fam["batch"] == planned):
        fam["plan"] = {"checkpointed": m["checkpointed"], "predicted_peak_bytes": m["predicted_peak_bytes"],
                       "recompute_overhead_percent": m["predicted_recompute_overhead_percent"]}
    elif fam.get("confirmed_batch") and fam["confirmed_batch"] != fam["batch"]:
        p = plan(prof, budget, max_batch=fam["confirmed_batch"], headroom=0.0)
        fam["plan"] = {"checkpointed": [l["name"] for l in p.layers if l["checkpoint"]],
                       "predicted_peak_bytes": p.data["predicted_peak_bytes"],
                       "predicted_reserved_bytes": p.data.get("predicted_reserved_bytes"),
                       "recompute_overhead_percent": p.data["recompute_overhead_percent"]}
    if fam.get("plan") and not fam["plan"]["checkpointed"]:
        fam["timing"]["measured_overhead_percent"] = 0.0
    fam["memfit_ratio"] = planned / fam["confirmed_batch"] if fam.get("confirmed_batch") else None
    fam["memfit_ratio_unconfirmed"] = planned / fam["batch"] if fam["batch"] else None
    # The same step without memfit's tracking hooks (the timing runs) against the prediction.
    if m["timing"].get("peak_allocated_bytes"):
        m["plain_run_error_percent"] = 100.0 * (m["timing"]["peak_allocated_bytes"] / m["predicted_peak_bytes"] - 1)
    log(f"[{name} {budget_text}] re-runs and timing: {len(timer.configs)} configurations x {timing_rounds} rounds "
        f"({case['timing_seconds']:.1f} s); confirmed: "
        + ", ".join(f"{k} {e['batch']}->{e['confirmed_batch']}" for e, k, _, _ in entries))
    # A longer run at memfit's answer: does the plan still fit after many steps?
    r = runner.trial(job, planned, budget, memfit_plan_policy(the_plan), warmup=1, steps=endurance_steps)
    m["endurance"] = {"steps": 1 + endurance_steps, "ok": r["ok"], "oom": r["oom"],
                      "measured_steps_done": len(r["step_seconds_all"]),
                      "peak_allocated_bytes": r["peak_allocated_bytes"], "peak_reserved_bytes": r["peak_reserved_bytes"],
                      "reserved_over_allocated": r["reserved_over_allocated"]}
    log(f"[{name} {budget_text}] memfit plan, {1 + endurance_steps} steps under the budget: "
        f"{'OOM' if r['oom'] else 'fits'} (peak reserved {_mib(r['peak_reserved_bytes'])} MiB)")
    # The same plan (same decisions) at 1.03x its batch, under the budget: if it still fits, the
    # headroom gave away more than 3%. ceil(1.03 x batch) in integers (1.03 * 100 is 103.00000000000001).
    plus3 = max((PLUS3_NUM * planned + 99) // 100, planned + 1)
    r = runner.trial(job, plus3, budget, memfit_plan_policy(the_plan), warmup=1, steps=timing_steps)
    m["plus3"] = {"batch": plus3, "factor": PLUS3_NUM / 100, "warmup_steps": 1, "steps": timing_steps,
                  "outcome": _outcome(r), "ok": r["ok"], "oom": r["oom"], "timeout": r["timeout"],
                  "error": r["error"], "peak_allocated_bytes": r["peak_allocated_bytes"],
                  "peak_reserved_bytes": r["peak_reserved_bytes"], "wall_seconds": r["wall_seconds"]}
    m["plus3_oom"] = r["oom"]
    log(f"[{name} {budget_text}] memfit plan at 1.03x its batch ({plus3}): {_outcome(r)} "
        f"(peak reserved {_mib(r['peak_reserved_bytes'])} MiB of {_mib(budget)})")
    case["acceptance"] = acceptance(case)
    log(f"[{name} {budget_text}] acceptance: "
        + ", ".join(f"({k}) {'met' if a['met'] else 'NOT met'}" for k, a in case["acceptance"]["checks"].items()))
    return case


def _outcome(r: Dict[str, Any]) -> str:
    return "fits" if r["ok"] else "OOM" if r["oom"] else "timeout" if r["timeout"] else f"error: {r['error']}"


def acceptance(c: Dict[str, Any]) -> Dict[str, Any]:
    """The four checks on memfit's own plan, with the numbers behind each."""
    m, fam = c["memfit"], c["memfit_family"]
    v, reruns, endurance, p3 = m["verify"], m.get("answer_reruns") or {"runs": 0, "ooms": 0}, m["endurance"], m["plus3"]
    cb = fam.get("confirmed_batch")
    ratio = m["batch"] / cb if cb else None
    # What stopped the family's bisection: a larger batch that failed (a run that ran out of memory, or the
    # planner saying no plan fits), the planner's own limit at headroom 0 (no family plan beyond it), or the
    # search's bound of 4x memfit's batch (then the true largest may be larger, and the ratio smaller).
    if cb is not None and cb != fam["batch"]:
        limit = "re-runs"
    elif fam.get("bound_hit") and fam["upper_bound"] < fam.get("headroom0_model_batch", fam["upper_bound"]):
        limit = "search_bound"
    elif fam.get("bound_hit"):
        limit = "model_headroom0"
    else:
        limit = "failure_above"
    above = next((r for r in fam["log"] if r["batch"] == fam["batch"] + 1), None)
    above_text = None if above is None else "rejected by the planner" if above.get("ran") is False else \
        "OOM" if above.get("oom") else "timeout" if above.get("timeout") else "error" if above.get("error") else "fits"
    ooms = {"verify": 1 if v["oom"] else 0, "reruns": reruns["ooms"], "long_run": 1 if endurance["oom"] else 0}
    runs = {"verify": 1, "reruns": reruns["runs"], "long_run": 1}
    ra = {"verify": v.get("reserved_over_allocated"), "reruns_max": reruns.get("reserved_over_allocated_max")}
    measured = [x for x in ra.values() if x is not None]
    checks = {
        "a": {"what": f"memfit's batch >= {BATCH_FRACTION:.0%} of its plan family's confirmed true largest",
              "memfit_batch": m["batch"], "family_batch_found": fam["batch"], "family_confirmed_batch": cb,
              "family_bound_hit": fam.get("bound_hit"), "family_limit": limit,
              "family_upper_bound": fam["upper_bound"], "family_next_batch_outcome": above_text, "family_headroom0_model_batch": fam.get("headroom0_model_batch"),
              "ratio": ratio, "threshold": BATCH_FRACTION,
              "met": ratio is not None and ratio >= BATCH_FRACTION},
        "b": {"what": "0 OOMs in memfit's verification, re-runs and long run", "ooms": ooms, "runs": runs,
              "ooms_total": sum(ooms.values()), "runs_total": sum(runs.values()), "met": sum(ooms.values()) == 0},
        "c": {"what": f"the plan at {PLUS3_NUM / 100:.2f}x its batch does not fit (OOM)", "batch": p3["batch"],
              "outcome": p3["outcome"], "peak_reserved_bytes": p3["peak_reserved_bytes"], "met": bool(p3["oom"])},
        "d": {"what": f"reserved / allocated <= {RESERVED_RATIO_MAX} in every verification run (verify, re-runs)",
              "verify": ra["verify"], "reruns_max": ra["reruns_max"], "max": max(measured) if measured else None,
              "long_run_info": endurance.get("reserved_over_allocated"), "threshold": RESERVED_RATIO_MAX,
              "met": bool(measured) and ra["verify"] is not None and max(measured) <= RESERVED_RATIO_MAX},
    }
    return {"checks": checks, "all_met": all(x["met"] for x in checks.values())}


# ---------------------------------------------------------------- the bench


def plan_bench(runs: int) -> Dict[str, Any]:
    exe = Path(os.environ["MEMFIT_BUILD_DIR"]) / "benchmarks" / "memfit-plan-bench"
    cmd = [str(exe), "--runs", str(runs)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    out: Dict[str, Any] = {"command": " ".join(shlex.quote(c) for c in [os.path.relpath(exe, REPO), "--runs", str(runs)]),
                           "returncode": done.returncode, "wall_seconds": time.perf_counter() - t0,
                           "header": "", "rows": []}
    lines = done.stdout.splitlines()
    if lines:
        out["header"] = lines[0]
    for line in lines:
        f = line.split()
        if len(f) == 10 and f[0] in ("same", "varied"):
            out["rows"].append({"blocks": f[0], "layers": int(f[1]), "precisions": int(f[2]), "objective": f[3],
                                "median_ms": float(f[4]), "batch": int(f[5]), "exact": f[6] == "yes",
                                "solves": int(f[7]), "batches": int(f[8]), "largest_front": int(f[9])})
    if done.returncode != 0:
        out["stderr"] = done.stderr[-2000:]
    return out


def machine_info() -> Dict[str, Any]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
        except OSError:
            return ""

    return {
        "uname": sh("uname", "-a"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else "",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "memfit": memfit.__version__,
        "git_commit": sh("git", "rev-parse", "HEAD"),
        "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
        "load_average_before": list(os.getloadavg()),
    }


# ------------------------------------------------------------------ output


def _mib(x: Optional[int]) -> str:
    return f"{x / MiB:.1f}" if x else "-"


def _f(x: Optional[float], fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if x is not None else "-"


def _ratio(a: Optional[int], b: Optional[int]) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _reruns(e: Dict[str, Any]) -> str:
    r = e.get("answer_reruns")
    return f"{r['ooms']} of {r['runs']}" if r else "-"


def _confirmed(e: Dict[str, Any]) -> str:
    b = e.get("confirmed_batch")
    if b is None:
        return "none within 16" if e.get("answer_reruns") else "-"
    return str(b)


def case_table(c: Dict[str, Any]) -> List[str]:
    m, fam = c["memfit"], c["memfit_family"]
    mb = m["batch"]
    rows = ["| method | batch found | real runs to find it | OOMs | wall s to answer | re-runs at it: OOMs | "
            "largest batch that fit every re-run | that / memfit's | step s | samples/s | "
            "recompute overhead % (measured; predicted) | peak alloc MiB | peak reserved MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, e: Dict[str, Any], runs: str, ooms: Any, wall: Optional[float],
            predicted: Optional[float] = None) -> None:
        t = e.get("timing") or {}
        over = _f(t.get("measured_overhead_percent"), "{:.0f}")
        if predicted is not None:
            over += f"; {predicted:.0f}"
        rows.append(f"| {label} | {e['batch']} | {runs} | {ooms} | {_f(wall, '{:.2f}')} | {_reruns(e)} | "
                    f"{_confirmed(e)} | {_ratio(e.get('confirmed_batch'), mb)} | {_f(t.get('step_seconds'))} | "
                    f"{_f(t.get('samples_per_second'), '{:.0f}')} | {over} | {_mib(t.get('peak_allocated_bytes'))} | "
                    f"{_mib(t.get('peak_reserved_bytes'))} |")

    row(f"**memfit plan** (checkpoint: {', '.join(m['checkpointed']) or 'none'})", m,
        f"{len(c['profile_batch_sizes'])} profiles + 1 verify", m["ooms"], m["answer_seconds"],
        m["predicted_recompute_overhead_percent"])
    row("memfit plan family, true largest (headroom 0, bisection)", fam,
        f"{fam['trials']} (+{fam['rejected_by_model']} rejected unrun)", fam["ooms"], fam["wall_seconds"],
        fam.get("plan", {}).get("recompute_overhead_percent"))
    labels = {"no_checkpoint": "no checkpointing (bisection)", "every_layer": "checkpoint every layer (bisection)",
              "sqrt_n": "sqrt(n) segments, checkpoint_sequential (bisection)"}
    for key, label in labels.items():
        p = c["policies"][key]
        row(label, p, str(p["trials"]), p["ooms"], p["wall_seconds"])
    f = c["finders"]
    a, lt = f["accelerate_like"], f["lightning_binsearch"]
    row(f"Accelerate-like (start {a['start']}, x0.9 per OOM)", a, str(a["trials"]), a["ooms"], a["wall_seconds"])
    row("Lightning-like binsearch (init 2, 3 steps/trial)", lt, str(lt["trials"]), lt["ooms"], lt["wall_seconds"])
    return rows


def _headroom_text(res: Dict[str, Any]) -> str:
    """The default headroom as the plans recorded it (`headroom`, `headroom_rule`, `model_error`)."""
    ms = [c["memfit"] for c in res["cases"]]
    rules = sorted({str(m.get("headroom_rule")) for m in ms})
    hs = [m["headroom"] for m in ms]
    bases = {round(m["headroom"] - m["model_error"], 9) for m in ms}
    span = f"{min(hs):.4f}" if min(hs) == max(hs) else f"{min(hs):.4f}-{max(hs):.4f}"
    text = f"rule `{', '.join(rules)}`"
    if rules == ["auto"] and len(bases) == 1:
        text += f": {next(iter(bases)):.2%} of the budget + the allocated model's self-check error (`model_error`)"
    return text + f"; {span} of the budget in this run"


def _yes(met: bool) -> str:
    return "met" if met else "**NOT met**"


def _above(a: Dict[str, Any]) -> str:
    return (" (above: memfit's batch is larger than the largest its plan family confirmed in re-runs)"
            if (a["ratio"] or 0) > 1 else "")


def _family_limit(a: Dict[str, Any]) -> str:
    lim = a.get("family_limit")
    if lim == "search_bound":
        return (f"; the family's bisection stopped at its bound {a['family_upper_bound']} (4x memfit's batch, below "
                f"the planner's headroom-0 batch {a['family_headroom0_model_batch']}): the true largest may be larger "
                "and the ratio smaller")
    if lim == "model_headroom0":
        return (f"; the family's largest is the planner's own limit at headroom 0 ({a['family_headroom0_model_batch']}"
                "): no family plan beyond it")
    if lim == "re-runs":
        return "; the family's answer failed re-runs and was walked down"
    return (f"; the family's batch {a['family_batch_found'] + 1} failed: "
            f"{a.get('family_next_batch_outcome') or 'not run'}")


def _acc_cells(c: Dict[str, Any]) -> List[str]:
    """(a)..(d) of acceptance(), each as 'numbers: met / NOT met'."""
    ch = c["acceptance"]["checks"]
    a, b, cc, d = ch["a"], ch["b"], ch["c"], ch["d"]
    fam = (f"{a['family_confirmed_batch']}" if a["family_confirmed_batch"] is not None else "none confirmed") + \
        (f" (found {a['family_batch_found']})" if a["family_batch_found"] != a["family_confirmed_batch"] else "")
    return [
        f"{a['memfit_batch']} / {fam} = {_f(a['ratio'], '{:.3f}')}{_above(a)}{_family_limit(a)}: {_yes(a['met'])}",
        f"{b['ooms_total']} of {b['runs_total']} (verify {b['ooms']['verify']}, re-runs {b['ooms']['reruns']} of "
        f"{b['runs']['reruns']}, long run {b['ooms']['long_run']}): {_yes(b['met'])}",
        f"batch {cc['batch']}: {cc['outcome']}: {_yes(cc['met'])}",
        f"verify {_f(d['verify'], '{:.4f}')}, re-runs max {_f(d['reruns_max'], '{:.4f}')}: {_yes(d['met'])}",
    ]


def write_markdown(path: Path, res: Dict[str, Any]) -> None:
    mi = res["machine"]
    st = res["settings"]
    hr = _headroom_text(res)
    out = [
        f"<!-- {path.name} — written by benchmarks/planner/compare.py: memfit's planner against fixed checkpoint",
        "     policies and trial-and-error batch finders, measured in one run. Rerun the script; do not edit. -->",
        f"# memfit planner against the alternatives, {res['date']}",
        "",
        "Produced by `benchmarks/planner/compare.py` (what it does and what each column means:",
        "[benchmarks/planner/README.md](../planner/README.md)). Every figure below was measured in this",
        f"one run and is copied from `{path.with_suffix('.json').name}` beside this file"
        + (" (a --quick run)." if res["quick"] else "."),
        "",
        "## Machine and run",
        "",
        f"- command: `{res['command']}`",
        f"- machine: `{mi['uname']}`",
        f"- CPU: {mi['cpu_model'] or '?'}, {mi['cpu_count']} CPUs ({mi['cpus_usable']} usable), "
        f"torch threads {mi['torch_threads']}; no GPU: every device is memfit's CPU allocator with the budget as "
        "its capacity",
        f"- Python {mi['python']}, PyTorch {mi['torch']}, memfit {mi['memfit']}, git {mi['git_commit'][:12]}"
        + (" (working tree has uncommitted changes to tracked files)" if mi["git_dirty"] else ""),
        f"- load average before / after: {' '.join(f'{x:.2f}' for x in mi['load_average_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in mi['load_average_after'])}",
        f"- allocator: vmm **{st['vmm']}** (`MEMFIT_CONF={st['MEMFIT_CONF']}` for every `memfit.install('cpu')` in "
        f"the process, `memfit.verify`'s included), granule {st['granule_bytes']} bytes"
        + (" (page-mapped pools)" if st["granule_bytes"] else " (segments)")
        + f"; planner headroom: the default, {hr}",
        f"- total wall time {res['wall_seconds'] / 60:.1f} min, {res['trials']} real training runs; "
        f"step times are medians over {res['settings']['timing_rounds']} interleaved runs x "
        f"{res['settings']['timing_steps']} measured steps (each run: a fresh model, 1 warm-up step first)",
        "",
        "## How to read this",
        "",
        "Each table is one model and budget; each row a way to choose the batch (and what to checkpoint).",
        "*batch found* is the method's answer, *real runs* / *OOMs* the training runs it needed to find it and how",
        "many ran out of memory, *wall s to answer* the time it took (memfit: profiling at two small batches plus",
        "planning, not its verification run; the others: their whole search, model builds included). Then every",
        "answer is run again under the same budget, 1 warm-up + 2 steps a run: *re-runs at it: OOMs* counts the",
        "failures. A search's answer sits on the edge, and there the same batch can fit once and fail the next time",
        "(one more step, or another run in the same process, changes how the free memory is split), so an answer",
        "whose re-runs fail is walked down one batch at a time to *the largest batch that fit every re-run*; the",
        "ratio to memfit's batch, step time, throughput and peaks are at that batch. *recompute overhead* is the",
        "step time over the unmodified model's at the same batch (run without a capacity limit, interleaved) minus",
        "1; for memfit's plans the planner's prediction follows the `;`. Peak allocated is what tensors held, peak",
        "reserved what the allocator mapped (it must fit the budget). The *plan family* row is the largest batch at",
        "which the planner's own plan with headroom 0 really runs: memfit / true says what the default headroom",
        f"({hr}) gives up. Fixed policies are bisected over 1..4x memfit's batch; the finders reimplement",
        "Accelerate's and Lightning's documented behaviour (neither is installed). Timings come from a noisy 2-core",
        "VM: compare ratios and counts within this run, not absolute times.",
        "",
        "The *acceptance* tables hold memfit's own plan to four checks: (a) its batch is at least "
        f"{BATCH_FRACTION:.0%} of the",
        "plan family's true largest (confirmed by the re-runs); (b) no OOM in its verification, its re-runs and its",
        f"long run; (c) the same plan (same layer decisions) at {PLUS3_NUM / 100:.2f}x its batch (ceil, at least "
        "+1), run for real under",
        f"the budget for 1 warm-up + {st['timing_steps']} steps, runs out of memory, so the headroom gives away "
        "less than 3%; (d)",
        f"reserved / allocated at the peaks is at most {RESERVED_RATIO_MAX} in the verification and in each re-run "
        "at memfit's batch.",
        "",
        "## Summary",
        "",
        "Batches as found -> the largest that fit every re-run, where they differ; OOMs hit while searching in",
        "parentheses.",
        "",
        "| model, budget | memfit batch | memfit family, true largest | memfit / true | no ckpt | every layer | "
        "sqrt(n) | Accelerate-like (OOMs) | Lightning-like (OOMs) | memfit answer s | memfit verify + re-runs + "
        "long run: OOMs | verify peak error % | verify reserved / allocated | verify reserved: predicted MiB, "
        "measured MiB, error % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fc(e: Dict[str, Any]) -> str:
        b, cb = e["batch"], e.get("confirmed_batch")
        if cb == b or not e.get("answer_reruns"):
            return str(b)
        return f"{b} -> {cb if cb is not None else 'none'}"

    for c in res["cases"]:
        m, fam, p, f = c["memfit"], c["memfit_family"], c["policies"], c["finders"]
        mo = (1 if m["verify"]["oom"] else 0) + (m["answer_reruns"] or {"ooms": 0})["ooms"] + \
            (1 if m["endurance"]["oom"] else 0)
        mr = 1 + (m["answer_reruns"] or {"runs": 0})["runs"] + 1
        out.append(
            f"| {c['job'].split(':')[1]}, {c['budget']} | {fc(m)} | {fc(fam)} | "
            f"{_f(fam['memfit_ratio'], '{:.2f}')} | {fc(p['no_checkpoint'])} | {fc(p['every_layer'])} | "
            f"{fc(p['sqrt_n'])} | {fc(f['accelerate_like'])} ({f['accelerate_like']['ooms']}) | "
            f"{fc(f['lightning_binsearch'])} ({f['lightning_binsearch']['ooms']}) | {m['answer_seconds']:.2f} | "
            f"{mo} of {mr} | {_f(m['verify']['error_percent'], '{:+.2f}')} | "
            f"{_f(m['verify'].get('reserved_over_allocated'), '{:.4f}')} | "
            f"{_mib(m['verify'].get('predicted_reserved_bytes'))}, {_mib(m['verify']['measured_peak_reserved_bytes'])},"
            f" {_f(m['verify'].get('reserved_error_percent'), '{:+.2f}')} |")
    met = sum(1 for c in res["cases"] if c["acceptance"]["all_met"])
    out += ["", f"## Acceptance (vmm {st['vmm']})", "",
            f"memfit's plan in each case; numbers first, then the verdict. **All four checks met in {met} of "
            f"{len(res['cases'])} cases.**", "",
            f"| model, budget | headroom | (a) memfit batch / family true largest >= {BATCH_FRACTION} | "
            f"(b) OOMs: verify + re-runs + long run = 0 | (c) same plan at {PLUS3_NUM / 100:.2f}x batch: OOM | "
            f"(d) reserved / allocated <= {RESERVED_RATIO_MAX} | all four |",
            "|---|---:|---|---|---|---|---|"]
    for c in res["cases"]:
        out.append(f"| {c['job'].split(':')[1]}, {c['budget']} | {c['memfit']['headroom']:.4f} | "
                   + " | ".join(_acc_cells(c)) + f" | {_yes(c['acceptance']['all_met'])} |")
    for c in res["cases"]:
        m, fam = c["memfit"], c["memfit_family"]
        v = m["verify"]
        out += ["", f"## {c['job']} at {c['budget']}", ""]
        out += case_table(c)
        ch = c["acceptance"]["checks"]
        cells = _acc_cells(c)
        out += ["", f"Acceptance of memfit's plan here: {_yes(c['acceptance']['all_met'])} (all four).", "",
                "| check | numbers: verdict |", "|---|---|"]
        out += [f"| ({k}) {ch[k]['what']} | {cell} |" for k, cell in zip("abcd", cells)]
        sq = c["policies"]["sqrt_n"]["layout"]
        rm = m.get("reserve_model") or {}
        out += [
            "",
            f"- memfit: profiled batches {', '.join(map(str, c['profile_batch_sizes']))} in "
            f"{m['profile_seconds']:.2f} s, planned in {m['plan_seconds'] * 1e3:.1f} ms (planner's own "
            f"{m['planner_seconds'] * 1e3:.2f} ms); predicted peak {_mib(m['predicted_peak_bytes'])} MiB of usable "
            f"{_mib(m.get('usable_allocated_bytes'))} MiB for allocated, predicted reserved "
            f"{_mib(m.get('predicted_reserved_bytes'))} MiB of usable {_mib(m['usable_bytes'])} MiB (headroom "
            f"{m['headroom']:.4f}, rule `{m.get('headroom_rule')}`; reserve model: {rm.get('rule', '?')}, overhead "
            f"{rm.get('overhead_bytes', '?')} bytes, ratio {_f(rm.get('ratio'), '{:.4f}')}, granule "
            f"{rm.get('granule_bytes', '?')}; self-check errors allocated {_f(m['model_error'], '{:.4%}')}, reserved "
            f"{_f(m.get('model_error_reserved'), '{:.4%}')}); verification at batch {v['batch_size']}: "
            f"{'OOM' if v['oom'] else 'no OOM'}, measured peak allocated {_mib(v['measured_peak_bytes'])} MiB "
            f"({_f(v['error_percent'], '{:+.2f}')}% against the prediction), reserved "
            f"{_mib(v['measured_peak_reserved_bytes'])} MiB = {_f(v.get('reserved_over_allocated'), '{:.4f}')}x "
            f"allocated ({_f(v.get('reserved_error_percent'), '{:+.2f}')}% against the predicted reserved "
            f"{_mib(v.get('predicted_reserved_bytes'))} MiB); predicted step {m['predicted_step_seconds']:.3f} s, measured {_f(m['timing']['step_seconds'])}"
            f" s (verify's, with memfit's tracking hooks: {_f(v['step_seconds'])} s). The same plan run without "
            f"memfit's tracking hooks (the timing runs): peak allocated {_mib(m['timing'].get('peak_allocated_bytes'))}"
            f" MiB ({_f(m.get('plain_run_error_percent'), '{:+.2f}')}% against the prediction). A run of "
            f"{m['endurance']['steps']} steps at memfit's batch under the budget: "
            f"{'OOM' if m['endurance']['oom'] else 'fits'}, peak reserved {_mib(m['endurance']['peak_reserved_bytes'])}"
            f" MiB of {_mib(c['budget_bytes'])} ({_f(m['endurance'].get('reserved_over_allocated'), '{:.4f}')}x "
            f"allocated). The same plan at batch {m['plus3']['batch']} ({m['plus3']['factor']:.2f}x): "
            f"{m['plus3']['outcome']}, peak allocated {_mib(m['plus3']['peak_allocated_bytes'])} MiB, reserved "
            f"{_mib(m['plus3']['peak_reserved_bytes'])} MiB.",
            f"- the planner's own baselines (same model, headroom {m['headroom']:.4f}): no checkpointing fits "
            f"{m['planner_baselines']['no_checkpoint']['batch_size']}, every layer checkpointed fits "
            f"{m['planner_baselines']['all_checkpoint']['batch_size']}.",
            f"- memfit family: the model at headroom 0 allows batch {fam['headroom0_model_batch']}; bisection over "
            f"{fam['lower_start']}..{fam['upper_bound']}"
            + (f"; the largest plan that ran checkpoints {', '.join(fam['plan']['checkpointed']) or 'nothing'}"
               if fam.get("plan") else "") + "; measured against predicted peak allocated in its runs that fit: "
            + (", ".join(f"batch {r['batch']} {r['prediction_error_percent']:+.2f}%"
                         + (f" (reserved {r['reserved_prediction_error_percent']:+.2f}%, "
                            f"{r['reserved_over_allocated']:.4f}x allocated)"
                            if r.get("reserved_prediction_error_percent") is not None else "")
                         for r in fam["log"] if r.get("prediction_error_percent") is not None) or "none ran")
            + "; candidates the planner rejected unrun: "
            + (", ".join(f"{r['batch']} ({r['note']})" for r in fam["log"] if r.get("ran") is False) or "none") + ".",
            f"- sqrt(n): {sq['blocks']} blocks in {sq['segments']} segments; checkpointed "
            f"{'; '.join('[' + ', '.join(g) + ']' for g in sq['checkpointed']) or 'nothing'}, last segment "
            f"[{', '.join(sq['plain'])}] runs plain (checkpoint_sequential's behaviour).",
        ]
        bound = [k for k, p in c["policies"].items() if p["bound_hit"]]
        if bound:
            out.append(f"- the bisection's upper bound ({c['search_upper_bound']}) was reached by: {', '.join(bound)}"
                       " (the true largest may be larger).")
        errs = [e for p in list(c["policies"].values()) + list(c["finders"].values()) + [fam] for e in p["errors"]]
        if errs:
            out.append(f"- errors other than OOM during the searches: {errs}")
    pb = res["plan_bench"]
    out += ["", "## Planning time on big generated profiles (memfit-plan-bench)", "",
            f"`{pb['command']}` — {pb['header'].split(': ', 1)[-1] if pb['header'] else ''} "
            "(GPT-like chains generated by `benchmarks/planner/bench_plan.c`; *same*: identical blocks, *varied*: "
            "blocks of varied sizes). *exact*: no front was coarsened (the answer is the proven optimum).", "",
            "| blocks | layers | precisions | objective | median ms | batch | exact | solver runs | batches | "
            "largest front |", "|---|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in pb["rows"]:
        out.append(f"| {r['blocks']} | {r['layers']} | {r['precisions']} | {r['objective']} | {r['median_ms']:.2f} | "
                   f"{r['batch']} | {'yes' if r['exact'] else 'no'} | {r['solves']} | {r['batches']} | "
                   f"{r['largest_front']} |")
    if pb["returncode"] != 0:
        out.append(f"\nmemfit-plan-bench exited {pb['returncode']}: {pb.get('stderr', '')}")
    if res["leaks"]:
        out += ["", f"Note: {len(res['leaks'])} trials left memory allocated after cleanup: {res['leaks'][:5]}"]
    path.write_text("\n".join(out) + "\n")


# ------------------------------------------------------- vmm on against off


def _stem(date: str, vmm: str, quick: bool) -> str:
    return f"planner-{date}" + ("-vmm-off" if vmm == "off" else "") + ("-quick" if quick else "")


def summarize_vmm(out_dir: Path, date: str, quick: bool) -> Path:
    """planner-DATE-vmm.md: the key figures of the vmm-on and vmm-off runs in one table, from their JSON."""
    runs = {}
    for vmm in ("on", "off"):
        p = out_dir / f"{_stem(date, vmm, quick)}.json"
        if not p.exists():
            raise SystemExit(f"compare.py --summarize-vmm: {p} is missing (run compare.py"
                             + (" --quick" if quick else "") + (" --vmm off" if vmm == "off" else "") + " first)")
        r = json.loads(p.read_text())
        got = r.get("settings", {}).get("vmm")
        if got != vmm:
            raise SystemExit(f"compare.py --summarize-vmm: {p} was run with vmm {got}, not {vmm}")
        runs[vmm] = (p, r)
    path = out_dir / f"planner-{date}-vmm{'-quick' if quick else ''}.md"
    out = [f"<!-- {path.name} — written by benchmarks/planner/compare.py --summarize-vmm {date}"
           + (" --quick" if quick else "") + " from the two JSON files it names.",
           "     Rerun the script; do not edit. -->",
           f"# memfit's plan with page-mapped pools (vmm on) and with segments (vmm off), {date}", "",
           "Two runs of `benchmarks/planner/compare.py`"
           + (" on the same machine (`" + runs["on"][1]["machine"]["uname"] + "`)"
              if runs["on"][1]["machine"]["uname"] == runs["off"][1]["machine"]["uname"] else
              " on different machines (compare their times with care)")
           + "; every figure is copied from", "their JSON files (the full tables: the `.md` beside each):", ""]
    for vmm, (p, r) in runs.items():
        mi, st = r["machine"], r["settings"]
        met = sum(1 for c in r["cases"] if c["acceptance"]["all_met"])
        out.append(f"- vmm {vmm}: [{p.with_suffix('.md').name}]({p.with_suffix('.md').name}), `{r['command']}`, "
                   f"`MEMFIT_CONF={st['MEMFIT_CONF']}`, granule {st['granule_bytes']} bytes, git "
                   f"{mi['git_commit'][:12]}{' (dirty)' if mi['git_dirty'] else ''}, {r['wall_seconds'] / 60:.1f} min, "
                   f"{r['trials']} runs, load average {mi['load_average_before'][0]:.2f} -> "
                   f"{mi['load_average_after'][0]:.2f}; headroom {_headroom_text(r)}; all four acceptance checks met "
                   f"in **{met} of {len(r['cases'])}** cases")
    out += ["", "Per case: memfit's batch; its plan family's true largest (as found -> confirmed by the re-runs); "
            "(a) their ratio", f"(>= {BATCH_FRACTION}); (d) reserved / allocated at the verification (and the re-runs' "
            f"largest; <= {RESERVED_RATIO_MAX}); the verification's", "reserved bytes against the planner's prediction; "
            "(b) OOMs of the verification + re-runs + long run (0); (c) the same plan at", f"{PLUS3_NUM / 100:.2f}x its "
            "batch under the budget (must OOM). *(above)*: memfit's batch is larger than the largest batch its plan",
            "family confirmed in re-runs, i.e. memfit planned past what reliably fits (see (b)). *(bound)*: the family's",
            "bisection stopped at its bound, 4x memfit's batch, so its true largest may be larger and the ratio "
            "smaller.", "",
            "| model, budget | vmm | headroom | memfit batch | family true largest | (a) ratio | (d) reserved / "
            "allocated: verify (re-runs max) | verify reserved: predicted / measured MiB (error %) | (b) OOMs | "
            "(c) 1.03x batch | all four |", "|---|---|---:|---:|---:|---|---|---|---|---|---|"]
    keys = [(c["job"], c["budget"]) for c in runs["on"][1]["cases"]]
    keys += [k for k in ((c["job"], c["budget"]) for c in runs["off"][1]["cases"]) if k not in keys]
    for job, budget in keys:
        for vmm, (_, r) in runs.items():
            c = next((c for c in r["cases"] if (c["job"], c["budget"]) == (job, budget)), None)
            if c is None:
                out.append(f"| {job.split(':')[1]}, {budget} | {vmm} | not run | | | | | | | | |")
                continue
            m, ch = c["memfit"], c["acceptance"]["checks"]
            a, b, cc, d, v = ch["a"], ch["b"], ch["c"], ch["d"], m["verify"]
            fam = f"{a['family_batch_found']}" + (f" -> {a['family_confirmed_batch']}" if
                                                   a["family_confirmed_batch"] != a["family_batch_found"] else "")
            out.append(
                f"| {job.split(':')[1]}, {budget} | {vmm} | {m['headroom']:.4f} | {m['batch']} | {fam} | "
                f"{_f(a['ratio'], '{:.3f}')}{' (above)' if (a['ratio'] or 0) > 1 else ''}"
                f"{' (bound)' if a.get('family_limit') == 'search_bound' else ''}: {_yes(a['met'])} | "
                f"{_f(d['verify'], '{:.4f}')} "
                f"({_f(d['reruns_max'], '{:.4f}')}): {_yes(d['met'])} | {_mib(v.get('predicted_reserved_bytes'))} / "
                f"{_mib(v['measured_peak_reserved_bytes'])} ({_f(v.get('reserved_error_percent'), '{:+.2f}')}) | "
                f"{b['ooms_total']} of {b['runs_total']}: {_yes(b['met'])} | {cc['batch']}: {cc['outcome']}: "
                f"{_yes(cc['met'])} | {_yes(c['acceptance']['all_met'])} |")
    path.write_text("\n".join(out) + "\n")
    return path


# -------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the three end-to-end budgets only, 1 timed step, 1 planner-bench run (a few minutes)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--trial-cap", type=float, default=60.0, help="seconds after which a trial is stopped")
    ap.add_argument("--vmm", choices=("on", "off"), default="on",
                    help="memfit's page-mapped pools for every allocator of the run (appends vmm:on|off to "
                         "MEMFIT_CONF); off writes planner-DATE-vmm-off.*")
    ap.add_argument("--summarize-vmm", metavar="DATE",
                    help="run nothing: put planner-DATE.json and planner-DATE-vmm-off.json (with --quick, their "
                         "-quick files) side by side in planner-DATE-vmm.md")
    args = ap.parse_args()
    if args.summarize_vmm:
        path = summarize_vmm(Path(args.out_dir), args.summarize_vmm, args.quick)
        print(f"wrote {path}")
        return 0

    # Before anything installs an allocator: every memfit.install('cpu') of this process, memfit.verify's
    # included, reads MEMFIT_CONF, and the last vmm key there wins.
    previous_conf = os.environ.get("MEMFIT_CONF", "").strip().strip(",")
    os.environ["MEMFIT_CONF"] = f"{previous_conf},vmm:{args.vmm}" if previous_conf else f"vmm:{args.vmm}"
    granule = memfit.install("cpu").granule()
    if (granule == 0) != (args.vmm == "off"):
        raise SystemExit(f"compare.py: --vmm {args.vmm} did not take effect: MEMFIT_CONF={os.environ['MEMFIT_CONF']}"
                         f" but memfit.install('cpu').granule() is {granule} (0 means vmm off, > 0 on)")

    cases = [c for c in CASES if c[3] or not args.quick]
    timing_rounds, timing_steps, endurance_steps = (1, 2, 5) if args.quick else (3, 2, 20)
    runner = Runner(args.trial_cap)
    started = time.perf_counter()
    res: Dict[str, Any] = {
        "_comment": "written by benchmarks/planner/compare.py: memfit's planner against fixed checkpoint policies "
                    "and trial-and-error batch finders, measured in one run; rendered as the .md beside this file",
        "format": "memfit-planner-compare", "version": 1, "date": args.date, "quick": args.quick,
        "command": " ".join(shlex.quote(a) for a in ["python3", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "environment": {"MEMFIT_BUILD_DIR": os.environ["MEMFIT_BUILD_DIR"], "MEMFIT_CONF": os.environ["MEMFIT_CONF"]},
        "machine": machine_info(),
        "settings": {"vmm": args.vmm, "MEMFIT_CONF": os.environ["MEMFIT_CONF"], "granule_bytes": granule,
                     "headroom": "planner default (each case's plan records headroom and headroom_rule)",
                     "acceptance": {"batch_fraction_of_family": BATCH_FRACTION, "plus3_factor": PLUS3_NUM / 100,
                                    "reserved_over_allocated_max": RESERVED_RATIO_MAX},
                     "trial_steps": "1 warm-up + 1 measured",
                     "timing_rounds": timing_rounds, "timing_steps": timing_steps,
                     "endurance_steps": 1 + endurance_steps, "trial_cap_seconds": args.trial_cap,
                     "bisection_upper_bound": "max(4 x memfit's planned batch, 8)",
                     "accelerate_like": {"starting_batch_size": ACCELERATE_START, "factor": ACCELERATE_FACTOR,
                                         "steps": 2},
                     "lightning_like": {"mode": "binsearch", "init_val": LIGHTNING_INIT,
                                        "max_trials": LIGHTNING_MAX_TRIALS, "steps_per_trial": LIGHTNING_STEPS}},
        "cases": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    for job, budget, sizes, _ in cases:
        res["cases"].append(run_case(runner, job, budget, sizes, timing_rounds, timing_steps, endurance_steps, log))
    log("memfit-plan-bench ...")
    res["plan_bench"] = plan_bench(1 if args.quick else 5)
    res["machine"]["load_average_after"] = list(os.getloadavg())
    res["wall_seconds"] = time.perf_counter() - started
    res["trials"] = runner.trials
    res["leaks"] = runner.leaks
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(args.date, args.vmm, args.quick)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(md_path, res)
    log(f"wrote {md_path} and {json_path.name} ({runner.trials} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
