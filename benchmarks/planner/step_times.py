#!/usr/bin/env python3
# step_times.py — how well a plan's predicted step time matches the step it really takes,
# with the profile's untraced timing ladder (planner/PLAN.md, "Step times") and without it
# (the traced times' fitted lines), on models from tests/python/jobs/real_models.py; writes
# benchmarks/results/step-times-DATE.{md,json}. See README.md.
"""Usage: python3 benchmarks/planner/step_times.py [--out-dir DIR] [--date YYYY-MM-DD]
                                                  [--models gpt2,llama,...] [--rounds N]

For each model: one memfit profile (batch sizes 2 and 4, with its timing ladder). For three
budgets (3x, 8x and 20x the profile's peak at batch 4): the max-batch plan from the profile
and from the same profile without its "timing" (the fitted lines), each run for real under
memfit on CPU (compare.py's Runner), rounds interleaved, the median step of each plan over
the rounds; reported as predicted / measured for both. A plan the two profiles agree on is
run once per round and compared with both predictions."""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (sets up the package path and the build directory)
import memfit  # noqa: E402
import torch  # noqa: E402

from memfit.documents import Profile  # noqa: E402
from memfit.planning import plan  # noqa: E402
from memfit.profiling import profile  # noqa: E402

JOBS = HERE.parents[1] / "tests" / "python" / "jobs" / "real_models.py"
MODELS = ("gpt2", "llama", "bert", "t5", "unet")
BUDGET_FACTORS = (3, 8, 20)


def _decisions(p: Any) -> List[Any]:
    return [(layer["name"], layer["checkpoint"], layer.get("selective", False), layer["precision"])
            for layer in p.data["layers"]]


def run_model(name: str, rounds: int, runner: compare.Runner) -> List[Dict[str, Any]]:
    job = f"{JOBS}:{name}"
    # A fresh allocator with no capacity: the last trial's (a budget) would end the timing ladder early.
    memfit.install("cpu")
    prof = profile(job, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    untimed = Profile(dict(prof.data, timing=[]))
    peak4 = max(s["peak_allocated_bytes"] for s in prof.data["settings"])
    rows = []
    for factor in BUDGET_FACTORS:
        budget = factor * peak4
        with_timing, without = plan(prof, budget=budget), plan(untimed, budget=budget)
        plans = {"timing": with_timing, "fitted": without}
        same = _decisions(with_timing) == _decisions(without) and with_timing.batch_size == without.batch_size
        runs = {"timing": [], "fitted": []}
        for _ in range(rounds):
            for key in ("timing",) if same else ("timing", "fitted"):
                p = plans[key]
                r = runner.trial(job, p.batch_size, budget, compare.memfit_plan_policy(p), warmup=2, steps=3)
                if r["step_seconds"] is not None:
                    runs[key].append(r["step_seconds"])
        if same:
            runs["fitted"] = runs["timing"]
        row = {"model": name, "budget_bytes": budget, "budget_factor": factor, "same_plan": same}
        for key, p in plans.items():
            measured = statistics.median(runs[key]) if runs[key] else None
            predicted = p.data["predicted_step_seconds"]
            row[key] = {"batch": p.batch_size,
                        "checkpointed": sum(1 for layer in p.data["layers"] if layer["checkpoint"]),
                        "units": len(p.data["layers"]),
                        "predicted_step_seconds": predicted, "measured_step_seconds": measured,
                        "predicted_over_measured": predicted / measured if measured else None}
        print(f"{name} {factor}x: batch {with_timing.batch_size}: timing {row['timing']['predicted_over_measured']:.2f}, "
              f"fitted {row['fitted']['predicted_over_measured']:.2f}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def render(res: Dict[str, Any]) -> str:
    lines = [f"# Predicted against measured step times ({res['date']})", "",
             f"Machine: {res['machine']['cpu_model']}, {res['machine']['cpus_usable']} CPUs usable, load average "
             f"before {res['machine']['load_average_before'][0]:.2f}, commit {res['machine']['git_commit'][:10]}"
             f"{' (dirty)' if res['machine']['git_dirty'] else ''}. torch {res['torch']}. Produced by "
             "`python3 benchmarks/planner/step_times.py`; each plan ran under memfit on CPU with the budget as its "
             f"capacity, {res['rounds']} rounds interleaved, 2 warm-up + 3 measured steps per round; measured is the "
             "median over rounds of each round's median step.", "",
             "| model | budget | batch | checkpointed units | predicted / measured, with timing | "
             "predicted / measured, fitted lines | measured step |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        t, f = r["timing"], r["fitted"]
        mib = r["budget_bytes"] / (1 << 20)
        def ratio(x):
            return f"{x['predicted_over_measured']:.2f}" if x["predicted_over_measured"] else "n/a"
        lines.append(f"| {r['model']} | {mib:.1f} MiB ({r['budget_factor']}x) | {t['batch']} | "
                     f"{t['checkpointed']} of {t['units']}{'' if r['same_plan'] else ' (fitted: ' + str(f['checkpointed']) + ')'} | "
                     f"{ratio(t)} | {ratio(f)} | {t['measured_step_seconds'] * 1e3:.0f} ms |")
    errs = {k: [abs(r[k]["predicted_over_measured"] - 1) for r in res["rows"] if r[k]["predicted_over_measured"]]
            for k in ("timing", "fitted")}
    lines += ["", f"Median |predicted / measured - 1|: with timing {100 * statistics.median(errs['timing']):.0f}%, "
              f"fitted lines {100 * statistics.median(errs['fitted']):.0f}%; worst: with timing "
              f"{100 * max(errs['timing']):.0f}%, fitted lines {100 * max(errs['fitted']):.0f}%.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(HERE.parent / "results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    machine = compare.machine_info()
    runner = compare.Runner(trial_cap_s=300)
    rows: List[Dict[str, Any]] = []
    for name in args.models.split(","):
        print(f"{name}:", file=sys.stderr, flush=True)
        rows += run_model(name, args.rounds, runner)
    res = {"date": args.date, "machine": machine, "torch": torch.__version__, "rounds": args.rounds,
           "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step-times-{args.date}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"step-times-{args.date}.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
