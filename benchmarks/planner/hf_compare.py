#!/usr/bin/env python3
# hf_compare.py — memfit's plan against what users of the transformers library pick instead:
# HF's own gradient_checkpointing_enable() (every block checkpointed) and Chen's sqrt(n)
# segments, on GPT-2 and Llama built from config (tests/python/jobs/real_models.py), three
# budgets each, in one run; writes benchmarks/results/hf-DATE.{md,json}. See README.md.
"""Usage: python3 benchmarks/planner/hf_compare.py [--out-dir DIR] [--date YYYY-MM-DD] [--budgets A,B,C]

For each model: one memfit profile (batches 2 and 4, real times). For each budget:
memfit's max-batch plan, verified by a real run under the budget; the true largest
batch of HF's gradient checkpointing and of sqrt(n) segments, each by bisection over
real runs under the budget; then, at HF's largest batch, memfit's fastest plan that
fits, and the step times of no checkpointing (no cap), HF's and memfit's there,
interleaved over rounds: the recompute each costs, as a ratio to the step without
checkpointing measured in the same run (each policy's fastest round: on a shared CPU
interference only ever slows a step, and medians of the same plan differed by tens of
points from run to run). Every trial runs on CPU with memfit
as PyTorch's CPU allocator and the budget as its capacity (compare.py's Runner)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "python" / "jobs"))

import compare  # noqa: E402  (sets up the package path and the build directory)
import memfit  # noqa: E402
import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

from memfit.documents import predicted_allocated  # noqa: E402
from memfit.planning import plan  # noqa: E402
from memfit.profiling import profile  # noqa: E402

JOBS = HERE.parents[1] / "tests" / "python" / "jobs" / "real_models.py"
MODELS = ("gpt2", "llama")
MiB = 1 << 20


def hf_gradient_checkpointing(model: torch.nn.Module) -> None:
    """What a transformers user turns on: every decoder layer checkpointed by HF itself
    (activation_checkpointing_enable in transformers 5.x, gradient_checkpointing_enable before)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


DECODER_PATHS = ("transformer.h", "model.layers")  # GPT-2's and Llama's decoder layers


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in DECODER_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise TypeError(f"no decoder layers found in {type(model).__name__}")


def sqrt_segments(model: torch.nn.Module) -> None:
    """Chen et al.'s sqrt(n): the n decoder layers in round(sqrt(n)) segments, each segment one
    checkpoint (only its input kept), the last segment without one (its backward follows at
    once), as torch.utils.checkpoint.checkpoint_sequential does. The parent's loop calls each
    layer: the first layer of a segment runs the whole segment, the others pass their input on
    (in this transformers version a decoder layer returns its hidden states as one tensor)."""
    layers = list(_decoder_layers(model))
    n = len(layers)
    segments = max(1, round(math.sqrt(n)))
    size = n // segments
    for start in range(0, size * (segments - 1), size):
        group = layers[start:start + size]
        forwards = [layer.forward for layer in group]

        def run(hidden: torch.Tensor, *args: Any, _forwards=forwards, **kwargs: Any) -> torch.Tensor:
            for f in _forwards:
                hidden = f(hidden, *args, **kwargs)
            return hidden

        def first(hidden: torch.Tensor, *args: Any, _run=run, **kwargs: Any) -> torch.Tensor:
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(_run, hidden, *args, use_reentrant=False, **kwargs)
            return _run(hidden, *args, **kwargs)

        group[0].forward = first
        for layer in group[1:]:
            layer.forward = lambda hidden, *args, **kwargs: hidden


def _steps(runner: compare.Runner, job: str, batch: int, policy, rounds: int) -> Dict[str, List[float]]:
    """Each round's median step time per policy at `batch`, no capacity, the policies
    interleaved per round."""
    times: Dict[str, List[float]] = {name: [] for name in policy}
    for _ in range(rounds):
        for name, p in policy.items():
            r = runner.trial(job, batch, None, p, warmup=2, steps=4)
            if r["step_seconds"] is not None:
                times[name].append(r["step_seconds"])
    return times


def run_model(runner: compare.Runner, name: str, budgets: List[int], rounds: int) -> Dict[str, Any]:
    job = f"{JOBS}:{name}"
    # A fresh allocator with no capacity: the last trial's (a budget) would end the timing ladder early.
    memfit.install("cpu")
    prof = profile(job, device="cpu", batch_sizes=(2, 4), steps=3, warmup_steps=2)
    out: Dict[str, Any] = {"model": name, "layers": [layer["name"] for layer in prof.settings[0]["layers"]],
                           "budgets": []}
    decoder = [n for n in out["layers"] if n.rsplit(".", 1)[0] in DECODER_PATHS]  # what HF checkpoints
    for budget in budgets:
        the_plan = plan(prof, budget=budget)
        d = the_plan.data
        upper = 4 * d["batch_size"]
        check = runner.trial(job, d["batch_size"], budget, compare.memfit_plan_policy(the_plan), warmup=1, steps=2)
        hf = compare.fixed_policy_search(runner, job, budget, hf_gradient_checkpointing, upper)
        sq = compare.fixed_policy_search(runner, job, budget, sqrt_segments, upper)
        row: Dict[str, Any] = {
            "budget_bytes": budget,
            "memfit": {"batch": d["batch_size"], "fits": check["ok"], "oom": check["oom"],
                       "predicted_peak_bytes": predicted_allocated(d),
                       "measured_peak_bytes": check["peak_allocated_bytes"],
                       "predicted_step_seconds": d["predicted_step_seconds"],
                       "measured_step_seconds": check["step_seconds"],
                       "checkpointed": [layer["name"] for layer in d["layers"] if layer["checkpoint"]],
                       "selective": [layer["name"] for layer in d["layers"] if layer.get("selective")]},
            "hf_gradient_checkpointing": {"batch": hf["batch"], "trials": hf["trials"], "bound_hit": hf["bound_hit"]},
            "sqrt_segments": {"batch": sq["batch"], "trials": sq["trials"], "bound_hit": sq["bound_hit"]},
        }
        # Equal batches: HF's largest (where every block must be recomputed) and
        # three quarters of it (where a plan may recompute less than HF's every block).
        row["equal_batch"] = []
        for equal_batch in sorted({hf["batch"], (3 * hf["batch"]) // 4} - {0}, reverse=True):
            at = plan(prof, budget=budget, max_batch=equal_batch)
            policies = {"none": None, "hf": hf_gradient_checkpointing, "memfit": compare.memfit_plan_policy(at)}
            times = _steps(runner, job, equal_batch, policies, rounds)
            best = {k: min(v) if v else None for k, v in times.items()}
            none = best["none"]
            row["equal_batch"].append({
                "batch": equal_batch,
                "memfit_batch": at.batch_size,
                "memfit_checkpointed": [layer["name"] for layer in at.layers if layer["checkpoint"]],
                "memfit_selective": [layer["name"] for layer in at.layers if layer.get("selective")],
                "memfit_predicted_recompute_seconds": at.data["predicted_recompute_seconds"],
                "memfit_same_as_hf": (not any(layer.get("selective") for layer in at.layers)
                                      and [layer["name"] for layer in at.layers if layer["checkpoint"]] == decoder),
                "step_seconds": best,
                "step_seconds_rounds": times,
                "recompute_overhead": {k: (best[k] / none - 1) if none and best[k] else None
                                       for k in ("hf", "memfit")},
                "rounds": rounds,
            })
        out["budgets"].append(row)
        print(json.dumps({"model": name, **row}), flush=True)
    return out


def write_markdown(path: Path, res: Dict[str, Any]) -> None:
    lines = [f"# memfit against HF gradient checkpointing and sqrt(n) segments ({res['date']})", "",
             f"Machine: {res['machine']['cpu_model']}, {res['machine']['cpus_usable']} CPUs usable, load average "
             f"before {res['machine']['load_average_before'][0]:.2f}, commit {res['machine']['git_commit'][:10]}"
             f"{' (dirty)' if res['machine']['git_dirty'] else ''}. torch {res['torch']}, "
             f"transformers {res['transformers']}. "
             "Produced by `python3 benchmarks/planner/hf_compare.py`; every batch is from real runs on CPU "
             "with memfit's allocator and the budget as its capacity.", "",
             "| model | budget | memfit batch (verified) | HF gc largest | sqrt(n) largest | memfit / HF | "
             "peak predicted / measured | step predicted / measured |",
             "|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for r in m["budgets"]:
            mf, hf, sq = r["memfit"], r["hf_gradient_checkpointing"], r["sqrt_segments"]
            fits = "fits" if mf["fits"] else ("OOM" if mf["oom"] else "error")
            ratio = f"{mf['batch'] / hf['batch']:.2f}" if hf["batch"] else "-"
            peak = (f"{mf['predicted_peak_bytes'] / MiB:.2f} / {mf['measured_peak_bytes'] / MiB:.2f} MiB"
                    if mf["measured_peak_bytes"] else "-")
            step = (f"{mf['predicted_step_seconds'] * 1e3:.0f} / {mf['measured_step_seconds'] * 1e3:.0f} ms"
                    if mf["measured_step_seconds"] else "-")
            lines.append(f"| {m['model']} | {r['budget_bytes'] // MiB} MiB | {mf['batch']} ({fits}) | {hf['batch']}"
                         f"{' (bound)' if hf['bound_hit'] else ''} | {sq['batch']}"
                         f"{' (bound)' if sq['bound_hit'] else ''} | {ratio} | {peak} | {step} |")
    lines += ["", "At HF's largest batch and at three quarters of it: step time against no checkpointing at that "
              f"batch (no cap), the fastest of {res['rounds']} interleaved rounds in this run (each round the "
              "median of 4 steps after 2 warm-up steps). HF checkpoints every decoder layer at both; memfit's plan is its fastest "
              "that fits at that batch (planned for memfit's own largest where that is smaller: it is run at the "
              "row's batch). Where memfit checkpoints the same decoder layers as HF, the two columns measure the "
              "same plan and differ only by noise.", "",
              "| model | budget | batch | HF gc recompute | memfit recompute | memfit checkpoints |",
              "|---|---|---|---|---|---|"]
    for m in res["models"]:
        for r in m["budgets"]:
            for e in r.get("equal_batch") or []:
                o = e["recompute_overhead"]
                fmt = lambda x: f"{100 * x:+.1f}%" if x is not None else "-"  # noqa: E731
                lines.append(f"| {m['model']} | {r['budget_bytes'] // MiB} MiB | {e['batch']} | {fmt(o['hf'])} | "
                             f"{fmt(o['memfit'])} | {len(e['memfit_checkpointed'])} of {len(m['layers'])} units"
                             f"{' (%d selectively)' % len(e['memfit_selective']) if e.get('memfit_selective') else ''}"
                             f"{', the same as HF' if e.get('memfit_same_as_hf') else ''} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(HERE.parent / "results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--budgets", default="16MiB,24MiB,40MiB")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from memfit import _lib
    import transformers

    budgets = [_lib.parse_size(b, "--budgets") for b in args.budgets.split(",")]
    runner = compare.Runner(trial_cap_s=120)
    res = {"date": args.date, "machine": compare.machine_info(), "torch": torch.__version__,
           "transformers": transformers.__version__, "rounds": args.rounds, "models": []}
    for name in MODELS:
        res["models"].append(run_model(runner, name, budgets, args.rounds))
    out = Path(args.out_dir)
    (out / f"hf-{args.date}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(out / f"hf-{args.date}.md", res)
    print(f"wrote {out / f'hf-{args.date}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
