#!/usr/bin/env python3
# fsdp_compare.py — memfit's per-rank FSDP2 prediction against PyTorch's own
# torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker and against the measured
# peak, on the same model and world size, in one run; writes
# benchmarks/results/fsdp-compare-DATE.{md,json}. See README.md and planner/DISTRIBUTED.md.
"""Usage: python3 benchmarks/planner/fsdp_compare.py [--out-dir DIR] [--date YYYY-MM-DD]
                                                   [--budget SIZE] [--world-size N] [--steps N]

1. profile the job once (one process, CPU, memfit's allocator; `memfit profile`, as
   tests/python/test_distributed.py does: batches 4 and 8, 1 warm-up + 1 step);
2. `memfit plan --strategy fsdp --world-size N` at the budget (max-batch, --max-batch 64):
   memfit's per-rank predicted peak;
3. run A, the measured peak: memfit.distributed.verify_distributed (N gloo ranks, memfit as
   each rank's CPU allocator with the budget as capacity, memfit.apply, fully_shard on each
   planned layer and on the root, 2 warm-up + STEPS measured steps);
4. run B, the same ranks and steps again, the same setup as verify (memfit allocator with the
   budget, memfit.apply, fully_shard of each planned layer and the root, the job's optimizer on
   the sharded parameters, 2 untracked warm-up steps), with the measured steps inside
   FSDPMemTracker(model, optimizer): its per-rank peak ("peak" snapshot, by category) and,
   from memfit's allocator in that same run, the measured peak (memfit's peaks reset when the
   tracked steps start).

FSDPMemTracker is a TorchDispatchMode that counts the bytes of tensor storages by device,
whatever the device (mem_tracker._WeakRefInfo rounds to 512 B on CUDA only, CPU storages count
their exact nbytes), so it runs on CPU tensors and gloo."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
os.environ.setdefault("MEMFIT_BUILD_DIR", str(REPO / "build"))
PYDIR = str(REPO / "bindings" / "python")
if PYDIR not in sys.path:
    sys.path.insert(0, PYDIR)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (PYDIR, os.environ.get("PYTHONPATH", "")) if p)

MiB = 1 << 20
WARMUP_STEPS = 2  # verify_distributed's default


def job():
    """The test's job (tests/python/test_distributed.py): 4 Linear layers, 4.3 MB of fp32 gradients."""
    from memfit.models import mlp_job

    return mlp_job(inputs=64, wide=2048)


JOB = f"{Path(__file__).resolve()}:job"


def _memfit(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "memfit", *args], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"memfit {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def _tracker_rank(rank: int, world_size: int, port: int, plan_path: str, budget: int, steps: int,
                  out_dir: str) -> None:
    """Run B on one rank: verify's setup, the measured steps inside FSDPMemTracker."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    result: Dict[str, Any] = {"rank": rank}
    try:
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        from torch.distributed.fsdp import fully_shard

        from memfit.install import install
        from memfit.job import load_job
        from memfit.planning import Plan, apply, to_device
        from memfit.tracking import move_parameters_into_memfit

        the_plan = Plan.load(plan_path)
        alloc = install("cpu", capacity=budget)
        job_obj = load_job(JOB)
        job_obj.check()
        model = job_obj.model.to("cpu")
        move_parameters_into_memfit(model, alloc)
        apply(model, the_plan)
        modules = dict(model.named_modules())
        for layer in the_plan.data["layers"]:
            fully_shard(modules[layer["name"]])
        fully_shard(model)
        optimizer = job_obj.optimizer(model.parameters())
        batch_size = the_plan.batch_size

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            batch = to_device(job_obj.make_batch(batch_size), "cpu")
            loss = job_obj.loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            del loss, batch

        for _ in range(WARMUP_STEPS):
            step()
        tracker = FSDPMemTracker(model, optimizer)
        alloc.reset_peaks()
        t0 = time.perf_counter()
        with tracker:
            for _ in range(steps):
                step()  # the batch is made inside the tracker: counted as it is allocated
        result["seconds"] = time.perf_counter() - t0
        peak = tracker.get_tracker_snapshot("peak")
        result["tracker_devices"] = [str(d) for d in peak]
        cpu = [v for d, v in peak.items() if torch.device(d).type == "cpu"]
        if cpu:
            snap = cpu[0]
            result["tracker_peak_bytes"] = int(snap["Total"])
            result["tracker_peak_by_category"] = {getattr(k, "value", str(k)): int(v)
                                                  for k, v in snap.items() if k != "Total"}
        else:
            result["tracker_peak_bytes"] = None
            result["tracker_error"] = f"no CPU device in FSDPMemTracker's peak snapshot: {list(peak)}"
        stats = alloc.stats()
        result["measured_peak_bytes"] = int(stats["allocated_bytes"]["peak"])
        result["measured_peak_reserved_bytes"] = int(stats["reserved_bytes"]["peak"])
    except Exception as e:  # reported by the parent, rank by rank
        import traceback

        result.update(tracker_peak_bytes=None, measured_peak_bytes=None,
                      tracker_error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def tracker_run(plan_path: str, budget: int, world_size: int, steps: int) -> List[Dict[str, Any]]:
    import torch.multiprocessing as mp

    from memfit.distributed import _free_port

    with tempfile.TemporaryDirectory(prefix="memfit-fsdp-tracker-") as out_dir:
        mp.start_processes(_tracker_rank, args=(world_size, _free_port(), plan_path, budget, steps, out_dir),
                           nprocs=world_size, join=True, start_method="spawn")
        ranks = []
        for r in range(world_size):
            p = Path(out_dir, f"rank{r}.json")
            ranks.append(json.loads(p.read_text()) if p.exists() else
                         {"rank": r, "tracker_peak_bytes": None, "measured_peak_bytes": None,
                          "tracker_error": "no result"})
    return ranks


def _ratio(a: Any, b: Any) -> Any:
    return round(a / b, 4) if isinstance(a, int) and isinstance(b, int) and b else None


def _mib(x: Any) -> str:
    return f"{x:,} ({x / MiB:.2f} MiB)" if isinstance(x, int) else "—"


def render(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"# memfit's FSDP2 per-rank prediction against FSDPMemTracker and the measured peak ({doc['date']})",
             "",
             f"Machine: {m['cpu_model']}, {m['cpus_usable']} CPUs usable, load average before {m['load_average_before'][0]:.2f}, "
             f"commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''}. **CPU, {doc['world_size']} gloo ranks**. "
             f"torch {m['torch']}, Python {m['python']}, memfit {m['memfit']}.",
             "",
             f"Produced by `{doc['command']}` ({doc['wall_seconds']:.0f} s wall). Every number below is from that run.",
             "",
             f"Job: `mlp_job(inputs=64, wide=2048)` (the test's, tests/python/test_distributed.py), profiled once in one "
             f"process (batches 4 and 8); plan `--strategy fsdp --world-size {doc['world_size']}` at "
             f"{doc['budget']} (`--max-batch 64`): batch {doc['per_rank_batch']} per rank, every planned layer "
             f"({', '.join(doc['layers'])}) and the root `fully_shard`-ed, fp32. Each run: {WARMUP_STEPS} warm-up steps, "
             f"then {doc['steps']} measured step(s).",
             "",
             "- **predicted**: memfit's per-rank `predicted_peak_bytes` (the plan).",
             "- **measured (run A)**: `verify_distributed` (memfit's `verify --nproc`): memfit's allocator's peak "
             "allocated bytes on each rank over the measured steps, with the budget as capacity.",
             "- **FSDPMemTracker (run B)**: the same ranks, setup and steps again, the measured steps inside "
             "`FSDPMemTracker(model, optimizer)`; its `get_tracker_snapshot(\"peak\")` total for the CPU device.",
             "- **measured (run B)**: memfit's allocator's peak in run B, over the same tracked steps (peaks reset "
             "when the tracker is entered): the measured peak the tracker's figure is compared with.",
             "",
             "| rank | memfit predicted | measured (A) | measured (A) / predicted | FSDPMemTracker peak (B) | measured (B) | measured (B) / tracker | tracker / predicted |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["ranks"]:
        lines.append(f"| {r['rank']} | {_mib(doc['predicted_peak_bytes'])} | {_mib(r['measured_peak_bytes'])} | "
                     f"{r['measured_over_predicted'] if r['measured_over_predicted'] is not None else '—'} | "
                     f"{_mib(r['tracker_peak_bytes']) if r['tracker_peak_bytes'] is not None else 'none: ' + str(r.get('tracker_error'))} | "
                     f"{_mib(r['tracker_run_measured_peak_bytes'])} | "
                     f"{r['measured_over_tracker'] if r['measured_over_tracker'] is not None else '—'} | "
                     f"{r['tracker_over_predicted'] if r['tracker_over_predicted'] is not None else '—'} |")
    lines += ["", "FSDPMemTracker's peak by category (bytes, at its peak):", "",
              "| rank | " + " | ".join(doc["tracker_categories"]) + " |",
              "|---|" + "---|" * len(doc["tracker_categories"])]
    for r in doc["ranks"]:
        cats = r.get("tracker_peak_by_category") or {}
        lines.append(f"| {r['rank']} | " + " | ".join(f"{cats.get(c, 0):,}" for c in doc["tracker_categories"]) + " |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--budget", default="32MiB")
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args(argv)
    command = "python3 benchmarks/planner/fsdp_compare.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                              if (argv if argv is not None else sys.argv[1:]) else "")
    t_start = time.perf_counter()
    load = list(os.getloadavg())

    import torch

    import memfit
    from memfit import _lib
    from memfit.distributed import verify_distributed

    budget = _lib.parse_size(args.budget, "budget")
    with tempfile.TemporaryDirectory(prefix="memfit-fsdp-compare-") as d:
        prof, plan_path = str(Path(d, "profile.json")), str(Path(d, "plan.json"))
        print(f"profile {JOB} ...", flush=True)
        _memfit("profile", "--job", JOB, "--batch-sizes", "4,8", "--steps", "1", "--warmup-steps", "1",
                "--out", prof, "-q")
        _memfit("plan", "--profile", prof, "--budget", args.budget, "--max-batch", "64", "--strategy", "fsdp",
                "--world-size", str(args.world_size), "--out", plan_path, "-q")
        plan = json.loads(Path(plan_path).read_text())
        print(f"plan: batch {plan['batch_size']} per rank, predicted {plan['predicted_peak_bytes']:,} B; "
              f"run A (verify_distributed) ...", flush=True)
        a = verify_distributed(JOB, plan_path, budget=budget, nproc=args.world_size, steps=args.steps,
                               warmup_steps=WARMUP_STEPS)
        print("run B (FSDPMemTracker) ...", flush=True)
        b = tracker_run(plan_path, budget, args.world_size, args.steps)
    predicted = int(a["predicted_peak_bytes"])
    ranks = []
    categories: List[str] = []
    for ra, rb in zip(a["ranks"], b):
        m_a = ra["measured_peak_bytes"] if not ra["oom"] and not ra["error"] else None
        tr, m_b = rb.get("tracker_peak_bytes"), rb.get("measured_peak_bytes")
        for c in (rb.get("tracker_peak_by_category") or {}):
            if c not in categories:
                categories.append(c)
        ranks.append({"rank": ra["rank"], "measured_peak_bytes": m_a, "verify_oom": ra["oom"],
                      "verify_error": ra["error"], "verify_error_percent": ra["error_percent"],
                      "tracker_peak_bytes": tr, "tracker_error": rb.get("tracker_error"),
                      "tracker_traceback": rb.get("traceback"),
                      "tracker_peak_by_category": rb.get("tracker_peak_by_category"),
                      "tracker_devices": rb.get("tracker_devices"),
                      "tracker_run_measured_peak_bytes": m_b,
                      "tracker_run_measured_peak_reserved_bytes": rb.get("measured_peak_reserved_bytes"),
                      "tracker_run_seconds": rb.get("seconds"),
                      "measured_over_predicted": _ratio(m_a, predicted),
                      "measured_over_tracker": _ratio(m_b, tr),
                      "tracker_over_predicted": _ratio(tr, predicted)})
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    notes = [
        "FSDPMemTracker runs on CPU tensors with gloo (nothing in it needs CUDA): it is a TorchDispatchMode that sums "
        "tensor storages' bytes per device (exact nbytes on CPU; only CUDA storages are rounded up to 512 B), with "
        "FSDP2's all-gather and reduce-scatter buffers recognised by their c10d ops. Its peak is of the live tensor "
        "bytes it saw, not an allocator's: memfit's allocator also rounds each block up to 512 B.",
        "The tracker's peak covers only the tracked (measured) steps, the warm-up outside it (the batch is made inside "
        "it, so it counts as Activation, not Inputs); memfit's peaks are reset at the same point, so both figures of "
        "run B are over the same steps.",
        "Runs A and B are separate runs of the same steps: gloo's asynchronous collectives can move the peak between "
        "runs (planner/DISTRIBUTED.md, FSDP2), so measured (A) and measured (B) may differ.",
    ]
    for r in ranks:
        if isinstance(r["tracker_peak_bytes"], int) and isinstance(r["tracker_run_measured_peak_bytes"], int):
            notes.append(f"Rank {r['rank']}: measured (B) - tracker = "
                         f"{r['tracker_run_measured_peak_bytes'] - r['tracker_peak_bytes']:+,} bytes; tracker - "
                         f"predicted = {r['tracker_peak_bytes'] - predicted:+,} bytes; measured (A) - predicted = "
                         + (f"{r['measured_peak_bytes'] - predicted:+,} bytes." if isinstance(r['measured_peak_bytes'], int)
                            else "none (the verify run failed)."))
        else:
            notes.append(f"Rank {r['rank']}: no FSDPMemTracker figure: {r['tracker_error']}")
    doc = {
        "date": args.date,
        "command": command,
        "wall_seconds": time.perf_counter() - t_start,
        "device": f"CPU, {args.world_size} gloo ranks",
        "machine": {"uname": " ".join(platform.uname()), "cpu_count": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "memfit": getattr(memfit, "__version__", "unknown"),
                    "git_commit": commit, "git_dirty": dirty, "load_average_before": load},
        "torch": torch.__version__,
        "job": "mlp_job(inputs=64, wide=2048)",
        "budget": args.budget, "budget_bytes": budget, "world_size": args.world_size,
        "per_rank_batch": plan["per_rank_batch"], "global_batch": plan["global_batch"],
        "layers": [layer["name"] for layer in plan["layers"]],
        "headroom": plan.get("headroom"), "headroom_rule": plan.get("headroom_rule"),
        "steps": args.steps, "warmup_steps": WARMUP_STEPS,
        "predicted_peak_bytes": predicted, "fsdp_freed_bytes": a.get("fsdp_freed_bytes"),
        "tracker_categories": categories, "ranks": ranks, "notes": notes,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fsdp-compare-{args.date}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"fsdp-compare-{args.date}.md").write_text(render(doc))
    print(render(doc))
    ok = all(r["measured_peak_bytes"] is not None and r["tracker_run_measured_peak_bytes"] is not None for r in ranks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
