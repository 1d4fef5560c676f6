"""The README's main command: profile the built-in GPT in fp32 and bf16, show
where its memory goes, plan the largest batch for a budget (each layer
checkpointed or not, in fp32 or bf16), apply the plan and train real steps at
that batch under memfit with the budget as capacity, and compare."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .reporting import human

DEMO_JOB = "memfit.models:demo_job"


def run_demo(args: argparse.Namespace) -> int:
    from .planning import plan
    from .profiling import profile
    from .reporting import plot, report

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    precisions = list(getattr(args, "precisions", None) or ["fp32", "bf16"])
    print(f"== 1. profile {DEMO_JOB} on {args.device}: real steps at batch 2 and 4 in {' and '.join(precisions)}, "
          "every allocation traced ==")
    prof = profile(DEMO_JOB, device=args.device, batch_sizes=(2, 4), precisions=precisions, steps=1,
                   warmup_steps=1, progress=lambda message: print(f"memfit: {message}", file=sys.stderr, flush=True))
    prof.save(out / "profile.json")
    print(report(prof))
    png = plot(prof, out / "timeline.png")
    print(f"\nprofile: {out / 'profile.json'}   timeline: {png}")

    print(f"\n== 2. plan the largest batch for a budget of {human(args.budget)} (change it with --budget): "
          f"per layer, checkpoint or not, and its precision ({', '.join(precisions)}) ==")
    the_plan = plan(prof, budget=args.budget)
    the_plan.save(out / "plan.json")
    print(the_plan.table())

    print(f"\n== 3. apply the plan and train at batch {the_plan.batch_size} under memfit, capacity = the budget ==")
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "memfit", "verify", "--job", DEMO_JOB, "--plan", str(out / "plan.json"),
           "--budget", str(args.budget), "--device", args.device, "--json", "--steps", "1", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        sys.stderr.write(done.stderr)
        print("memfit demo: the verification run failed", file=sys.stderr)
        return 2
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (out / "verify.json").write_text(json.dumps(result, indent=1) + "\n")
    def error(key: str) -> str:  # None: the run ran out of memory, nothing to compare
        return f"{result[key]:+.2f}%" if result.get(key) is not None else "not compared: out of memory"

    print(f"  predicted peak {human(result['predicted_peak_bytes'])}   measured peak "
          f"{human(result['measured_peak_bytes'])}   ({error('error_percent')})")
    print(f"  predicted reserved {human(result['predicted_reserved_bytes'])}   measured peak reserved "
          f"{human(result['measured_peak_reserved_bytes'])}   ({error('reserved_error_percent')})")
    print(f"  budget {human(result['budget_bytes'])}   OOM: {'yes' if result['oom'] else 'no'}")
    base = the_plan.data["baselines"]
    print(f"  without memfit's plan: no checkpointing fits batch {base['no_checkpoint']['batch_size']}, "
          f"checkpointing every layer fits batch {base['all_checkpoint']['batch_size']}; "
          f"the plan runs batch {the_plan.batch_size}")
    return 1 if result["oom"] else 0
