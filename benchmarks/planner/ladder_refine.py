#!/usr/bin/env python3
# ladder_refine.py — what the default ladder's added points (memfit.timing.refinements)
# change: an HF ViT profiled in fp32 and bf16 with the default ladder, planned from that
# profile and from the same profile less the added points, each plan run in a fresh
# process and its peak measured against its prediction.
"""Usage: python3 benchmarks/planner/ladder_refine.py [--budgets MiB,MiB,...] [--out FILE.md]

The job is ViTForImageClassification from the transformers library, built from config
(image 32, patch 4, hidden 64, 4 layers, 4 heads), profiled at 2 and 4. The profile's
timing entries not on the ladder's own points are the added ones; dropping them gives
the profile the ladder alone measured (the same runs). Prints the bf16 checkpointed
ladder checks and one line per budget and profile; --out also writes them as Markdown
with the machine and versions (benchmarks/results/). About 2 minutes on 2 cores."""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402,F401  (sets up the package path and the build directory)

import memfit  # noqa: E402
from memfit import timing  # noqa: E402

JOB = f"{Path(__file__).resolve()}:hf_vit"


def hf_vit() -> memfit.Job:
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=128, num_labels=10, attn_implementation="sdpa")

    def batch(b: int):
        g = torch.Generator().manual_seed(b)
        return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)

    return memfit.Job(model=ViTForImageClassification(cfg), make_batch=batch,
                      loss_fn=lambda m, xy: m(pixel_values=xy[0], labels=xy[1]).loss,
                      optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3))


def _memfit(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "memfit", *args, "--json", "-q"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memfit {args[0]} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="11,12,13,14")
    ap.add_argument("--out")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    prof = memfit.profile(JOB, batch_sizes=(2, 4), precisions=("fp32", "bf16"), steps=3, warmup_steps=1)
    ladder = set(timing.ladder([2, 4], None))
    lone = copy.deepcopy(prof.data)
    lone["timing"] = [e for e in lone["timing"] if e["batch_size"] in ladder]
    added = sorted({(e["precision"], e.get("mode", "plain"), e["batch_size"]) for e in prof.data["timing"]}
                   - {(e["precision"], e.get("mode", "plain"), e["batch_size"]) for e in lone["timing"]})
    lines = [f"added points: {', '.join(f'{p} {m} {b}' for p, m, b in added) or 'none'}", "",
             "bf16 every layer checkpointed, measured - model:"]
    for c in memfit.plan(prof, "16TiB", max_batch=1).data["ladder_checks"]:
        if c["precision"] == "bf16" and c["mode"] == "checkpointed":
            lines.append(f"  batch {c['batch_size']:4d}  {c['measured'] - c['predicted']:+9d} B  "
                         f"{100 * (c['measured'] - c['predicted']) / c['predicted']:+.2f}%")
    lines += ["", "predicted: the model's peak and the plan's corrections (ladder, checkpoint check)",
              "budget   profile        batch  predicted B  measured B  measured/predicted - 1"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("ladder+added", prof.data), ("ladder alone", lone)):
            path = Path(tmp) / f"{name.replace(' ', '_')}.json"
            memfit.Profile(data).save(path)
            for mib in budgets:
                out = Path(tmp) / f"plan-{mib}.json"
                plan = _memfit("plan", "--profile", str(path), "--budget", f"{mib}MiB", "--out", str(out))
                got = _memfit("verify", "--job", JOB, "--plan", str(out))
                state = "OOM" if got["oom"] else f"{got['error_percent']:+.2f}%"
                lines.append(f"{mib:3d} MiB  {name:13s}  {plan['batch_size']:5d}  {got['predicted_peak_bytes']:11d}"
                             f"  {got['measured_peak_bytes']:10d}  {state}")
                print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.out:
        import torch
        import transformers
        repo = HERE.parents[1]
        commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        head = (f"# The default ladder's added points on an HF ViT ({datetime.date.today()})\n\n"
                f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; torch "
                f"{torch.__version__}, transformers {transformers.__version__}, memfit "
                f"{memfit._lib.lib().mf_version().decode()}, commit {commit}. Produced by `python3 {Path(__file__).relative_to(HERE.parents[1])}"
                f" --out ...`: the job profiled in fp32 and bf16 at 2 and 4 with the default ladder; each budget planned "
                f"from that profile and from it less the points the ladder added, each plan run in a fresh process "
                f"(`memfit verify`). planner/PLAN.md, \"The ladder check\".\n\n")
        Path(args.out).write_text(head + "```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
