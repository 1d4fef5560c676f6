#!/usr/bin/env python3
"""benchmarks/host_granule.py — which granule should memfit's CPU allocator map
(host backend, page-mapped pools)? Real CPU training steps of the built-in jobs
under memfit, with segments (vmm:off) and with granules of the page size, 16 KiB,
64 KiB and 2 MiB: peak reserved / peak allocated and the step time as a ratio to
segments, all in one run, configurations interleaved round by round.

    python3 benchmarks/host_granule.py [--rounds 3] [--steps 4] [--out-dir benchmarks/results]

Writes host-granule-DATE.md and .json. Needs the C build (build/, or MEMFIT_BUILD_DIR)
with the torch adapter, and torch."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> memfit.install options on top of the CPU defaults
    "segments (vmm:off)": {"vmm": "off"},
    "page granule": {"vmm": "on", "vmm_granule": str(os.sysconf("SC_PAGE_SIZE"))},
    "16 KiB": {"vmm": "on", "vmm_granule": "16KiB"},
    "64 KiB": {"vmm": "on", "vmm_granule": "64KiB"},
    "2 MiB": {"vmm": "on", "vmm_granule": "2MiB"},
}
# (label, job factory, batch, checkpoint every block): the checkpointed GPT is the
# pattern that fragments (recomputation between long-lived gradients).
JOBS = [
    ("gpt", "memfit.models:gpt_job", 48, False),
    ("gpt, every block checkpointed", "memfit.models:gpt_job", 96, True),
    ("cnn", "memfit.models:cnn_job", 48, False),
    ("mlp", "memfit.models:mlp_job", 256, False),
    ("demo gpt", "memfit.models:demo_job", 8, False),
]


def worker(job_spec: str, batch: int, checkpoint: bool, options: dict, steps: int) -> dict:
    """One configuration in this (fresh) process."""
    import torch

    import memfit
    from memfit.job import load_job
    from memfit.planning import Plan, apply
    from memfit.blocks import find_units as block_list
    from memfit.tracking import move_parameters_into_memfit

    alloc = memfit.install("cpu", **options)
    job = load_job(job_spec)
    model = job.model
    move_parameters_into_memfit(model, alloc)
    if checkpoint:
        layers = [{"name": name, "checkpoint": True, "precision": "fp32"} for name, _ in block_list(model)]
        apply(model, Plan({"batch_size": batch, "layers": layers}))
    optimizer = job.optimizer(model.parameters())
    times, mappings = [], 0
    for i in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        batch_data = job.make_batch(batch)
        t0 = time.perf_counter()
        loss = job.loss_fn(model, batch_data)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - t0)
        del loss, batch_data
        with open("/proc/self/maps") as maps:  # the kernel's mappings of memfit's host pages
            mappings = max(mappings, sum(1 for line in maps if "memfd:memfit" in line))
    s = alloc.stats()
    return {
        "granule": alloc.granule(),
        "peak_allocated": s["allocated_bytes"]["peak"],
        "peak_reserved": s["reserved_bytes"]["peak"],
        "step_seconds": statistics.median(times),
        "granule_maps": s["granule_maps"],
        "segment_maps": s["segment_maps"],
        "memfd_mappings": mappings,
        "torch": torch.__version__,
    }


def run_one(job_spec: str, batch: int, checkpoint: bool, options: dict, steps: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "bindings/python") + os.pathsep + env.get("PYTHONPATH", "")
    arg = json.dumps({"job": job_spec, "batch": batch, "checkpoint": checkpoint, "options": options, "steps": steps})
    out = subprocess.run([sys.executable, __file__, "--worker", arg], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"host_granule: {job_spec} {options} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        w = json.loads(args.worker)
        print(json.dumps(worker(w["job"], w["batch"], w["checkpoint"], w["options"], w["steps"])))
        return
    runs: dict = {label: {name: [] for name in CONFIGS} for label, *_ in JOBS}
    for r in range(args.rounds):
        for label, spec, batch, ckpt in JOBS:
            for name, options in CONFIGS.items():
                res = run_one(spec, batch, ckpt, options, args.steps)
                runs[label][name].append(res)
                print(f"round {r + 1} {label:32s} {name:20s} reserved/allocated "
                      f"{res['peak_reserved'] / res['peak_allocated']:.4f} step {res['step_seconds'] * 1e3:.1f} ms",
                      flush=True)
    rows = []
    for label, spec, batch, ckpt in JOBS:
        base = [x["step_seconds"] for x in runs[label]["segments (vmm:off)"]]
        for name in CONFIGS:
            rs = runs[label][name]
            ratios = [x["step_seconds"] / b for x, b in zip(rs, base)]
            rows.append({
                "job": label, "batch": batch, "config": name, "granule": rs[0]["granule"],
                "peak_allocated": max(x["peak_allocated"] for x in rs),
                "peak_reserved": max(x["peak_reserved"] for x in rs),
                "reserved_over_allocated": max(x["peak_reserved"] / x["peak_allocated"] for x in rs),
                "step_ratio_to_segments": statistics.median(ratios),
                "granule_maps": statistics.median(x["granule_maps"] for x in rs),
                "memfd_mappings": max(x["memfd_mappings"] for x in rs),
            })
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"date": args.date, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "torch": runs[JOBS[0][0]]["64 KiB"][0]["torch"], "rounds": args.rounds, "steps": args.steps,
            "load_average": os.getloadavg(), "command": "python3 benchmarks/host_granule.py " + " ".join(
                f"--{k} {v}" for k, v in (("rounds", args.rounds), ("steps", args.steps)))}
    (out_dir / f"host-granule-{args.date}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs},
                                                                      indent=1) + "\n")
    lines = [f"# Host granule for memfit's CPU allocator, {args.date}", "",
             f"Produced by `{meta['command']}` ({meta['machine']}; torch {meta['torch']}; load average at the end "
             f"{', '.join(f'{x:.2f}' for x in meta['load_average'])}). Real CPU training steps under memfit "
             f"(1 warm-up + {args.steps} measured per run, {args.rounds} rounds, configurations interleaved). "
             "Reserved / allocated: the worst run; step time: the median over rounds of the ratio to segments "
             "in the same round. Granules mapped: per run (median); memfd mappings: the most lines of "
             "/proc/self/maps naming memfit's host pages after any step (Linux's vm.max_map_count limits "
             "a process to 65,530 mappings). Raw figures beside this file (`.json`).", "",
             "| job | batch | config | granule B | peak allocated MiB | peak reserved MiB | reserved / allocated "
             "| step time / segments | granules mapped | memfd mappings (max) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['job']} | {row['batch']} | {row['config']} | {row['granule']} | "
                     f"{row['peak_allocated'] / 2**20:.1f} | {row['peak_reserved'] / 2**20:.1f} | "
                     f"{row['reserved_over_allocated']:.4f} | {row['step_ratio_to_segments']:.3f} | "
                     f"{row['granule_maps']:.0f} | {row['memfd_mappings']} |")
    (out_dir / f"host-granule-{args.date}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/host-granule-{args.date}.md")


if __name__ == "__main__":
    main()
