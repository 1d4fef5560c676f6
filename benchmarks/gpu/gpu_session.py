"""benchmarks/gpu/gpu_session.py — the Python half of memfit's prepared GPU session
(benchmarks/gpu/run.sh calls it; see benchmarks/gpu/README.md).

Each subcommand is one step of the session (or a helper of run.sh's shell steps):
it writes one result JSON (--out) and exits 0 (ok), 77 (skipped: the JSON's
"skipped" says why) or 1 (failed). Steps that compare allocators start one worker
process per allocator, because PyTorch's CUDA allocator is chosen once per process
(backend:memfit through PYTORCH_CUDA_ALLOC_CONF must be set before the interpreter
starts). run.sh sets MEMFIT_GPU_MODE=gpu|dry-run; in a dry run every comparison runs
on the CPU, at tiny sizes, through memfit's CPU allocator, or says why it cannot.

Also a job factory for `python3 -m memfit plan|verify --job benchmarks/gpu/gpu_session.py:gpt2_job`.
Only the standard library is imported at module level, so `report` runs without torch.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import pickle
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYDIR = REPO / "bindings" / "python"
SKIP = 77  # exit status of a step that did not apply here (the result JSON says why)
GiB = 1 << 30
MiB = 1 << 20

# The models, built from code (memfit.models.GPT, explicit attention). "gpt2" is
# GPT-2 small's shape (12 blocks, width 768, 12 heads, vocabulary 50257, context 1024;
# 163,037,184 parameters in memfit's GPT, whose head is not tied to the embedding as
# GPT-2's is); "tiny" is the dry run's.
MODELS: Dict[str, Dict[str, int]] = {
    "gpt2": dict(depth=12, width=768, heads=12, vocab=50257, context=1024),
    "tiny": dict(depth=2, width=64, heads=2, vocab=256, context=32),
}

# What each step runs, on the GPU and in a dry run. Sized so the whole session fits
# run.sh's budget table (README.md says how the sizes were chosen).
SETTINGS: Dict[str, Dict[str, Any]] = {
    "gpu": dict(
        model="gpt2", batch=8, warmup=5, steps=20, small_batch=1, small_context=128,
        memfit_capacity="60GiB", varlen_steps=24, varlen_min_frac=0.125,
        plan_budget="20GiB", plan_batches="2,4", plan_steps=2, probes=4,
        snapshot_entries=400_000, oom_batch=512,
    ),
    "dry-run": dict(
        model="tiny", batch=4, warmup=1, steps=3, small_batch=1, small_context=16,
        memfit_capacity="256MiB", varlen_steps=6, varlen_min_frac=0.25,
        plan_budget="8MiB", plan_batches="2,4", plan_steps=1, probes=2,
        snapshot_entries=10_000, oom_batch=4096,
    ),
}


# --------------------------------------------------------------------- basics


def mode() -> str:
    m = os.environ.get("MEMFIT_GPU_MODE", "dry-run")
    if m not in SETTINGS:
        raise SystemExit(f"gpu_session: MEMFIT_GPU_MODE must be gpu or dry-run, not {m!r}")
    return m


def settings() -> Dict[str, Any]:
    s = dict(SETTINGS[mode()])
    for key in list(s):  # MEMFIT_GPU_<KEY> overrides, for a rerun at other sizes
        env = os.environ.get(f"MEMFIT_GPU_{key.upper()}")
        if env is not None:
            s[key] = type(s[key])(env) if not isinstance(s[key], str) else env
    return s


def device() -> str:
    return "cuda" if mode() == "gpu" else "cpu"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def human(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def exc_info(e: BaseException) -> Dict[str, Any]:
    """What an exception was, in the terms issue 10 asks about (OOM type above all)."""
    text = str(e)
    first = next((line for line in text.splitlines() if line.strip()), "")
    info: Dict[str, Any] = {
        "raised": True,
        "type": f"{type(e).__module__}.{type(e).__qualname__}",
        "is_runtime_error": isinstance(e, RuntimeError),
        "says_out_of_memory": "out of memory" in text.lower(),
        "message": first[:400],
    }
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        info["is_torch_oom"] = isinstance(e, torch.OutOfMemoryError)
    return info


def is_oom(e: BaseException) -> bool:
    info = exc_info(e)
    return bool(info.get("is_torch_oom") or info["says_out_of_memory"] or type(e).__name__ == "MemfitOutOfMemoryError")


class Deadline:
    """The step's time limit (run.sh's STEP_LIMIT), so that sub-processes end inside it."""

    def __init__(self, reserve: float = 2.0) -> None:
        self.start = time.monotonic()
        limit = float(os.environ.get("STEP_LIMIT", "600"))
        self.end = self.start + max(limit - reserve, 1.0)

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.0)


def child_env(alloc: str = "native", capacity: Optional[str] = None) -> Dict[str, str]:
    """A worker's environment: the checkout's package and libraries, and the
    allocator chosen the way a user chooses it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMFIT_CONF", "MEMFIT_INSTALL")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYDIR), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["MEMFIT_GPU_ALLOC"] = alloc
    if mode() == "gpu":
        conf = {
            "native": None,
            "async": "backend:cudaMallocAsync",
            "native-expandable": "expandable_segments:True",
            "memfit": "backend:memfit" + (f",capacity:{capacity}" if capacity else ""),
        }[alloc]
        if conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    else:
        # One thread: on a small shared CPU machine, OpenMP's spinning threads made the tiny
        # model's steps 20 times slower (0.6 s instead of 0.03 s) whenever the cores were busy.
        env["OMP_NUM_THREADS"] = "1"
        if capacity:
            env["MEMFIT_GPU_CPU_CAPACITY"] = capacity
    return env


def run_child(args: List[str], env: Dict[str, str], timeout: float, log: Optional[Path] = None) -> Dict[str, Any]:
    """Run `python3 ARGS` (this interpreter); its output goes to `log` and to ours."""
    t0 = time.monotonic()
    cmd = [sys.executable, *args]
    print(f"$ {' '.join(cmd)}  (limit {timeout:.0f} s)", flush=True)
    if timeout < 1:
        return {"cmd": cmd, "rc": None, "status": "skipped", "reason": "no time left in the step", "seconds": 0.0}
    try:
        done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, errors="replace")
        out, rc = done.stdout, done.returncode
        status = "ok" if rc == 0 else ("skipped" if rc == SKIP else "failed")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, status = None, "timeout"
    sys.stdout.write(out)
    sys.stdout.flush()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out)
    tail = [line for line in out.splitlines() if line.strip()][-1:] or [""]
    return {"cmd": cmd, "rc": rc, "status": status, "seconds": round(time.monotonic() - t0, 2),
            "last_line": tail[0][:300]}


def finish(out: Path, result: Dict[str, Any]) -> int:
    """Write the step's result and turn its status into the exit code run.sh reads."""
    write_json(out, result)
    status = result.get("status", "ok")
    if status == "skipped":
        print(f"skipped: {result.get('skipped', '')}")
        return SKIP
    return 0 if status == "ok" else 1


# ------------------------------------------------------------ the job factory


def gpt2_job():
    """memfit.Job for `memfit plan|verify`: the session's GPT (MEMFIT_GPU_MODEL, default
    by mode), AdamW, random tokens, next-token cross-entropy."""
    import torch
    from torch.nn import functional as F

    import memfit
    from memfit.models import GPT

    cfg = MODELS[os.environ.get("MEMFIT_GPU_MODEL") or settings()["model"]]
    torch.manual_seed(0)
    model = GPT(**cfg)

    def make_batch(batch_size: int):
        g = torch.Generator().manual_seed(batch_size)
        idx = torch.randint(0, cfg["vocab"], (batch_size, cfg["context"] + 1), generator=g)
        return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def loss_fn(m, batch):
        x, y = batch
        logits = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return memfit.Job(model=model, make_batch=make_batch, loss_fn=loss_fn,
                      optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))


# ------------------------------------------------------------------- workers
# A worker runs one allocator in its own process; its parent chose the allocator
# through the environment (child_env).


def _worker_start() -> Dict[str, Any]:
    """Import torch the way the user's program would, and say which allocator came up."""
    alloc = os.environ.get("MEMFIT_GPU_ALLOC", "native")
    info: Dict[str, Any] = {"alloc": alloc, "mode": mode(), "pid": os.getpid()}
    info["autoload_ran_at_start"] = "memfit._autoload" in sys.modules  # the .pth imported it
    if mode() == "gpu" and alloc == "memfit" and not info["autoload_ran_at_start"]:
        if os.environ.get("MEMFIT_GPU_AUTOLOAD") == "manual":
            import memfit._autoload  # noqa: F401  the .pth's work, where site-packages was read-only
            info["autoload_route"] = "import memfit._autoload (no .pth)"
        else:
            info["autoload_route"] = "none: memfit-autoload.pth did not run"
    elif info["autoload_ran_at_start"]:
        info["autoload_route"] = "memfit-autoload.pth"
    t0 = time.perf_counter()
    import torch

    info["import_torch_seconds"] = round(time.perf_counter() - t0, 3)
    info["cuda_initialized_after_import"] = bool(torch.cuda.is_initialized()) if hasattr(torch, "cuda") else None
    info["conf_left_for_torch"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    info["memfit_conf"] = os.environ.get("MEMFIT_CONF")
    info["torch"] = torch.__version__
    return info


def _memfit_for_worker(info: Dict[str, Any]):
    """The memfit allocator of this worker, or None (a native run)."""
    if info["alloc"] != "memfit":
        return None
    import memfit

    if mode() == "gpu":
        a = memfit.current()
        info["memfit_active"] = a is not None and a.device == "cuda"
        if a is None:
            raise RuntimeError("backend:memfit was asked for, but memfit is not PyTorch's CUDA allocator "
                               f"(autoload route: {info.get('autoload_route')})")
        return a
    capacity = os.environ.get("MEMFIT_GPU_CPU_CAPACITY")
    a = memfit.install("cpu", **({"capacity": capacity} if capacity else {}))
    info["memfit_active"] = True
    return a


def _sync(dev: str) -> None:
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory(dev: str, mf) -> Dict[str, Any]:
    """Allocated and reserved, as torch.cuda reports them and as memfit does."""
    import torch

    out: Dict[str, Any] = {}
    if dev == "cuda":
        t: Dict[str, Any] = {}
        for key, fn in (("allocated", "memory_allocated"), ("peak_allocated", "max_memory_allocated"),
                        ("reserved", "memory_reserved"), ("peak_reserved", "max_memory_reserved")):
            try:
                t[key] = int(getattr(torch.cuda, fn)())
            except Exception as e:  # cudaMallocAsync or a pluggable allocator may not answer
                t[key] = None
                t[f"{key}_error"] = exc_info(e)["message"]
        out["torch"] = t
    if mf is not None:
        s = mf.stats()
        out["memfit"] = {"allocated": s["allocated_bytes"]["current"], "peak_allocated": s["allocated_bytes"]["peak"],
                         "reserved": s["reserved_bytes"]["current"], "peak_reserved": s["reserved_bytes"]["peak"],
                         "requested": s["requested_bytes"]["current"], "peak_requested": s["requested_bytes"]["peak"]}
    src = out.get("memfit") or out.get("torch") or {}
    pa, pr = src.get("peak_allocated"), src.get("peak_reserved")
    out["peak_allocated"], out["peak_reserved"] = pa, pr
    out["reserved_over_allocated"] = round(pr / pa, 5) if pa and pr else None
    return out


class Trainer:
    """The session's training loop: GPT, bf16 autocast, AdamW, random tokens."""

    def __init__(self, dev: str, model_name: str) -> None:
        import torch

        from memfit.models import GPT

        self.torch = torch
        self.dev = dev
        self.cfg = MODELS[model_name]
        torch.manual_seed(0)
        with torch.device(dev):
            self.model = GPT(**self.cfg)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.gen = torch.Generator(device=dev).manual_seed(1234)

    def batch(self, b: int, t: int):
        idx = self.torch.randint(0, self.cfg["vocab"], (b, t + 1), device=self.dev, generator=self.gen)
        return idx[:, :-1], idx[:, 1:]

    def step(self, b: int, t: int) -> Tuple[float, float]:
        """One training step at batch b, length t; (seconds, loss). Synchronized on both sides."""
        from torch.nn import functional as F

        torch = self.torch
        x, y = self.batch(b, t)
        _sync(self.dev)
        t0 = time.perf_counter()
        with torch.autocast(device_type=self.dev, dtype=torch.bfloat16):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.dev)
        seconds = time.perf_counter() - t0
        return seconds, float(loss.detach())

    def timed(self, b: int, t: int, warmup: int, steps: int) -> Dict[str, Any]:
        for _ in range(warmup):
            self.step(b, t)
        times, losses = [], []
        for _ in range(steps):
            s, loss = self.step(b, t)
            times.append(s)
            losses.append(loss)
        return {"batch": b, "context": t, "warmup": warmup, "steps": steps,
                "median_seconds": statistics.median(times), "mean_seconds": statistics.fmean(times),
                "min_seconds": min(times), "max_seconds": max(times),
                "step_seconds": [round(x, 6) for x in times], "last_loss": losses[-1],
                "losses_finite": all(math.isfinite(x) for x in losses)}


def _driver_used(dev: str) -> Optional[int]:
    if dev != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def worker_train(args: argparse.Namespace) -> int:
    """Issue 11 item 2: timed steps under one allocator; under memfit also the
    torch.cuda.memory_* figures against memfit's own, and an OOM under the capacity."""
    out = Path(args.out)
    info = _worker_start()
    s = settings()
    dev = device()
    res: Dict[str, Any] = {"worker": "train", **info, "device": dev, "status": "failed", "model": s["model"]}
    write_json(out, res)
    mf = _memfit_for_worker(info)
    import torch

    if dev == "cuda":
        torch.cuda.init()
        res["allocator_backend"] = torch.cuda.get_allocator_backend()
        res["device_name"] = torch.cuda.get_device_name()
        res["driver_used_at_start"] = _driver_used(dev)
    tr = Trainer(dev, s["model"])
    res["parameters"] = tr.params
    res["main"] = tr.timed(s["batch"], tr.cfg["context"], s["warmup"], s["steps"])
    res["memory"] = _memory(dev, mf)
    if dev == "cuda":
        res["driver_used_at_end"] = _driver_used(dev)
        used = (res["driver_used_at_end"] or 0) - (res["driver_used_at_start"] or 0)
        res["driver_used_delta"] = used
    res["status"] = "ok"
    write_json(out, res)
    # The launch-bound regime: one short sequence, where the allocator's host time shows.
    res["small"] = tr.timed(s["small_batch"], s["small_context"], s["warmup"], s["steps"])
    write_json(out, res)
    if mf is not None:
        res["stats_agree"] = _stats_agree(dev, mf)
        res["oom"] = _oom_checks(tr, dev, mf, s)
        res["memfit_stats"] = mf.stats()
        res["memfit_granule"] = mf.granule()
        write_json(out, res)
    return 0


def _stats_agree(dev: str, mf) -> Dict[str, Any]:
    """torch.cuda.memory_* under memfit against memfit's own figures (CUDA only)."""
    if dev != "cuda":
        return {"skipped": "torch.cuda.memory_* exist for CUDA only"}
    import torch

    s = mf.stats()
    pairs = {
        "memory_allocated": (lambda: torch.cuda.memory_allocated(), s["allocated_bytes"]["current"]),
        "max_memory_allocated": (lambda: torch.cuda.max_memory_allocated(), s["allocated_bytes"]["peak"]),
        "memory_reserved": (lambda: torch.cuda.memory_reserved(), s["reserved_bytes"]["current"]),
        "max_memory_reserved": (lambda: torch.cuda.max_memory_reserved(), s["reserved_bytes"]["peak"]),
    }
    out: Dict[str, Any] = {}
    for name, (fn, mine) in pairs.items():
        try:
            theirs = int(fn())
            out[name] = {"torch": theirs, "memfit": mine, "equal": theirs == mine}
        except Exception as e:
            out[name] = {"memfit": mine, "error": exc_info(e)}
    out["all_equal"] = all(v.get("equal") for v in out.values() if isinstance(v, dict))
    try:
        free, total = torch.cuda.mem_get_info()
        out["mem_get_info"] = {"free": int(free), "total": int(total), "memfit_capacity": mf.capacity(),
                               "reserved": s["reserved_bytes"]["current"]}
    except Exception as e:
        out["mem_get_info"] = {"error": exc_info(e)}
    return out


def _cleanup(dev: str, mf=None) -> None:
    gc.collect()
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    if mf is not None:
        try:
            mf.empty_cache()
        except Exception:
            pass


def _oom_checks(tr: Trainer, dev: str, mf, s: Dict[str, Any]) -> Dict[str, Any]:
    """An OOM provoked under memfit's capacity raises torch.OutOfMemoryError, and the loop goes on."""
    import torch

    out: Dict[str, Any] = {"capacity": mf.capacity()}
    try:
        t = torch.empty(mf.capacity() + GiB, dtype=torch.uint8, device=dev)
        out["big_tensor"] = {"raised": False, "bytes": t.numel()}
        del t
    except Exception as e:
        out["big_tensor"] = exc_info(e)
    _cleanup(dev, mf)
    big = s["oom_batch"]
    try:
        tr.step(big, tr.cfg["context"])
        out["big_step"] = {"raised": False, "batch": big}
    except Exception as e:
        out["big_step"] = {**exc_info(e), "batch": big}
    tr.opt.zero_grad(set_to_none=True)
    _cleanup(dev, mf)
    try:
        after = [tr.step(s["batch"], tr.cfg["context"]) for _ in range(3)]
        out["loop_goes_on"] = {"steps": len(after), "losses_finite": all(math.isfinite(x[1]) for x in after)}
    except Exception as e:
        out["loop_goes_on"] = {"steps": 0, "error": exc_info(e)}
    ok = out["big_tensor"].get("is_torch_oom") and out["big_step"].get("is_torch_oom")
    out["torch_oom_type"] = bool(ok)
    out["ok"] = bool(ok) and out["loop_goes_on"].get("steps") == 3 and out["loop_goes_on"].get("losses_finite")
    return out


def _start_history(n: int) -> Optional[str]:
    import torch

    try:
        torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=n)
        return None
    except TypeError:
        try:
            torch.cuda.memory._record_memory_history(enabled="all", max_entries=n)
            return None
        except Exception as e:
            return exc_info(e)["message"]
    except Exception as e:
        return exc_info(e)["message"]


def snapshot_reserved(snap: Dict[str, Any], dev: int = 0) -> Dict[str, Any]:
    """Peak reserved bytes from a snapshot's segment events, and whether its ring buffer wrapped."""
    traces = snap.get("device_traces") or []
    events = traces[dev] if len(traces) > dev else []
    cur = peak = 0
    counts: Dict[str, int] = {}
    for e in events:
        a = e.get("action")
        counts[a] = counts.get(a, 0) + 1
        if a in ("segment_alloc", "segment_map"):
            cur += int(e.get("size", 0))
            peak = max(peak, cur)
        elif a in ("segment_free", "segment_unmap"):
            cur -= int(e.get("size", 0))
    return {"entries": len(events), "peak_reserved_from_segments": peak, "actions": counts}


def worker_memory(args: argparse.Namespace) -> int:
    """Issue 11 item 3 (and the snapshots of item 5): memory of a run, fixed or varying length."""
    out = Path(args.out)
    info = _worker_start()
    s = settings()
    dev = device()
    res: Dict[str, Any] = {"worker": "memory", **info, "device": dev, "pattern": args.pattern, "status": "failed"}
    write_json(out, res)
    if not_here(info["alloc"]):
        res.update(status="skipped", skipped=not_here(info["alloc"]))
        return finish(out, res)
    mf = _memfit_for_worker(info)
    import torch

    if args.snapshot and dev == "cuda":
        res["history_error"] = _start_history(s["snapshot_entries"])
    tr = Trainer(dev, s["model"])
    ctx = tr.cfg["context"]
    rng = random.Random(20261201)
    lo = max(1, int(ctx * s["varlen_min_frac"]))
    lengths = [ctx if args.pattern == "fixed" else rng.randint(lo, ctx) for _ in range(s["varlen_steps"])]
    res["lengths"] = lengths
    trail = []
    for t in lengths:
        tr.step(s["batch"], t)
        m = _memory(dev, mf)
        src = m.get("memfit") or m.get("torch") or {}
        trail.append([src.get("allocated"), src.get("reserved")])
    res["memory"] = _memory(dev, mf)
    res["trail_allocated_reserved"] = trail
    if mf is not None:
        res["memfit_granule"] = mf.granule()
        res["memfit_stats"] = mf.stats()
    res["status"] = "ok"
    write_json(out, res)
    if args.snapshot and dev == "cuda" and not res.get("history_error"):
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        res["snapshot"] = {"path": args.snapshot, **snapshot_reserved(snap),
                           "truncated_possible": None}
        res["snapshot"]["truncated_possible"] = res["snapshot"]["entries"] >= s["snapshot_entries"]
        with gzip.open(args.snapshot, "wb", compresslevel=6) as f:
            pickle.dump(snap, f, protocol=4)
        res["snapshot"]["bytes_gz"] = os.path.getsize(args.snapshot)
        write_json(out, res)
    return 0


def worker_probes(args: argparse.Namespace) -> int:
    """Issue 11 item 4: bisection probes of the largest batch the plan's layer decisions fit."""
    import memfit
    from memfit.planning import Plan

    out = Path(args.out)
    s = settings()
    dev = device()
    base = Plan.load(args.plan)
    planned = base.batch_size
    lo, hi = (planned, None) if args.planned_fits else (0, planned)
    res: Dict[str, Any] = {"worker": "probes", "device": dev, "planned": planned, "planned_fits": args.planned_fits,
                           "budget": args.budget, "probes": [], "status": "failed"}
    write_json(out, res)
    deadline = time.monotonic() + args.seconds
    for _ in range(args.count):
        if hi is not None and hi - lo <= 1:
            break
        c = max(lo + 1, math.ceil(lo * 1.25)) if hi is None else (lo + hi) // 2
        if time.monotonic() > deadline:
            res["stopped"] = "out of time"
            break
        t0 = time.perf_counter()
        data = json.loads(json.dumps(base.data))
        data["batch_size"] = c
        try:
            r = memfit.verify(args.job, Plan(data), args.budget, device=dev, steps=1, warmup_steps=1)
            fits = not r["oom"]
            entry = {"batch": c, "fits": fits, "peak": r["measured_peak_bytes"], "reserved": r["measured_peak_reserved_bytes"],
                     "error": r.get("error")}
        except Exception as e:
            if not is_oom(e):
                raise
            fits = False
            entry = {"batch": c, "fits": False, "escaped_verify": exc_info(e)}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        res["probes"].append(entry)
        if fits:
            lo = c
        else:
            hi = c
        _cleanup(dev, memfit.current())
        write_json(out, res)
    res["largest_fit"] = lo
    res["smallest_oom"] = hi
    res["planned_over_largest"] = round(planned / lo, 4) if lo else None
    res["status"] = "ok"
    return finish(out, res)


# --------------------------------------------------------------------- steps


def step_env(args: argparse.Namespace) -> int:
    """Versions and the device: nvidia-smi, driver, CUDA, torch, python, gcc, cmake, git."""
    out = Path(args.out)

    def sh(cmd: List[str], timeout: float = 30) -> Optional[str]:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            return (done.stdout + done.stderr).strip() if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    def first(text: Optional[str]) -> Optional[str]:
        return text.splitlines()[0].strip() if text else None

    res: Dict[str, Any] = {"mode": mode(), "status": "ok",
                           "date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["host"] = {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "os": None, "memory_kib": None}
    try:
        osr = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        res["host"]["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0]
        res["host"]["memory_kib"] = int(mem.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    smi_path = shutil.which("nvidia-smi") or next((p for p in ("/usr/local/nvidia/bin/nvidia-smi", "/usr/bin/nvidia-smi")
                                                    if os.path.exists(p)), None)
    gpus: List[Dict[str, Any]] = []
    cuda_from_smi = None
    if smi_path:
        q = sh([smi_path, "--query-gpu=index,name,driver_version,memory.total,compute_cap,pci.bus_id",
                "--format=csv,noheader,nounits"])
        for line in (q or "").splitlines():
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 6:
                gpus.append({"index": f[0], "name": f[1], "driver": f[2], "memory_total_mib": f[3],
                             "compute_capability": f[4], "pci": f[5]})
        full = sh([smi_path]) or ""
        m = re.search(r"CUDA Version:\s*([0-9.]+)", full)
        cuda_from_smi = m.group(1) if m else None
        res["nvidia_smi"] = full
        res["nvidia_smi_clocks"] = sh([smi_path, "--query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,pstate",
                                       "--format=csv"])
    res["gpus"] = gpus
    v: Dict[str, Any] = {"nvidia_smi": smi_path, "driver": gpus[0]["driver"] if gpus else None,
                         "cuda_driver_version": cuda_from_smi}
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    nv = sh([nvcc, "--version"]) if nvcc and os.path.exists(nvcc) else None
    v["nvcc"] = (re.search(r"release ([0-9.]+)", nv).group(1) if nv and re.search(r"release ([0-9.]+)", nv) else None)
    v["python"] = platform.python_version()
    v["python_executable"] = sys.executable
    v["gcc"] = first(sh(["gcc", "--version"]))
    v["cmake"] = first(sh(["cmake", "--version"]))
    v["compute_sanitizer"] = os.environ.get("MEMFIT_GPU_SANITIZER_VERSION") or None
    commit = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    if commit:
        v["git_commit"], v["git_dirty_files"] = commit, len((dirty or "").splitlines()) if dirty is not None else None
        v["git_commit_from"] = "git"
    else:
        stamp = read_json(HERE / "deps" / "commit.json") or {}
        v["git_commit"], v["git_dirty_files"] = stamp.get("commit"), stamp.get("dirty_files")
        v["git_commit_from"] = "benchmarks/gpu/deps/commit.json (prepare.sh)" if stamp else "unknown: no .git, no stamp"
    code = ("import json, time; t = time.time(); import torch; d = {'torch': torch.__version__, "
            "'torch_cuda': torch.version.cuda, 'import_seconds': round(time.time() - t, 2), "
            "'cuda_available': torch.cuda.is_available()}\n"
            "try:\n d['cudnn'] = torch.backends.cudnn.version()\nexcept Exception as e:\n d['cudnn'] = None\n"
            "if d['cuda_available']:\n p = torch.cuda.get_device_properties(0); torch.zeros(1, device='cuda')\n"
            " d.update(device=p.name, capability='%d.%d' % (p.major, p.minor), total_memory=p.total_memory,"
            " multiprocessors=p.multi_processor_count, device_count=torch.cuda.device_count())\n"
            "print(json.dumps(d))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        res["torch_info"] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
            "error": done.stderr.strip().splitlines()[-1:] if done.stderr else done.returncode}
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        res["torch_info"] = {"error": str(e)}
    ti = res["torch_info"]
    v["torch"], v["torch_cuda"], v["cudnn"] = ti.get("torch"), ti.get("torch_cuda"), ti.get("cudnn")
    res["versions"] = v
    res["device"] = {"name": ti.get("device") or (gpus[0]["name"] if gpus else None) or "cpu (no GPU)",
                     "capability": ti.get("capability"), "total_memory": ti.get("total_memory"),
                     "multiprocessors": ti.get("multiprocessors"), "count": ti.get("device_count") or len(gpus)}
    if mode() == "gpu" and not ti.get("cuda_available"):
        res["status"] = "failed"
        res["reason"] = "torch.cuda.is_available() is False on a GPU run"
    for k, val in v.items():
        print(f"{k:22} {val}")
    return finish(out, res)


def step_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    dl = Deadline()
    s = settings()
    res: Dict[str, Any] = {"step": f"train-{args.alloc}", "alloc": args.alloc, "settings": s}
    if args.alloc == "async" and mode() != "gpu":
        res.update(status="skipped", skipped="backend:cudaMallocAsync needs CUDA (dry run)")
        return finish(out, res)
    wout = out.with_name(out.stem + ".worker.json")
    cap = s["memfit_capacity"] if args.alloc == "memfit" else None
    run = run_child([str(Path(__file__)), "worker-train", "--out", str(wout)], child_env(args.alloc, cap), dl.left())
    res["run"] = run
    res["worker"] = read_json(wout)
    w = res["worker"] or {}
    if run["status"] == "ok" and w.get("status") == "ok":
        res["status"] = "ok"
    else:
        res["status"] = "timeout" if run["status"] == "timeout" else "failed"
        res["reason"] = f"worker {run['status']}: {run.get('last_line', '')}"
        if w.get("status") == "ok":  # the timed part finished: keep it, but say what broke
            res["reason"] += " (the timed steps completed)"
    return finish(out, res)


def not_here(alloc: str) -> Optional[str]:
    """Why a memory run of this allocator cannot run in this mode (None: it can)."""
    if mode() == "gpu":
        return None
    if alloc in ("async", "native-expandable"):
        return f"{alloc} is a CUDA allocator setting: no CUDA in a dry run"
    if alloc == "native":
        return "PyTorch's CPU allocator keeps no reserved/allocated statistics"
    return None


MEMORY_RUNS = [  # (name, allocator, pattern, snapshot?)
    ("varlen-memfit", "memfit", "varlen", False),
    ("varlen-native", "native", "varlen", True),
    ("varlen-native-expandable", "native-expandable", "varlen", True),
    ("fixed-native", "native", "fixed", True),
]


def step_memory_runs(args: argparse.Namespace) -> int:
    """Four memory-only runs at once (their timing is not used, so they may share the GPU)."""
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    snaps = Path(args.snapshots)
    snaps.mkdir(parents=True, exist_ok=True)
    dl = Deadline()
    s = settings()
    procs = []
    res: Dict[str, Any] = {"step": "memory-runs", "runs": {}, "settings": s,
                           "parallel": not (args.serial or os.environ.get("MEMFIT_GPU_SERIAL") == "1")}
    for name, alloc, pattern, snap in MEMORY_RUNS:
        why = not_here(alloc)
        if why:
            res["runs"][name] = {"status": "skipped", "rc": None, "skipped": why, "result": None, "last_line": ""}
            continue
        wout = work / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__)), "worker-memory", "--out", str(wout), "--pattern", pattern]
        if snap:
            cmd += ["--snapshot", str(snaps / f"{name}.pickle.gz")]
        log = (work / f"{name}.log").open("w")
        cap = s["memfit_capacity"] if alloc == "memfit" else None
        print(f"$ {' '.join(cmd)}  [{alloc}]", flush=True)
        p = subprocess.Popen(cmd, env=child_env(alloc, cap), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p, wout, log))
        if args.serial or os.environ.get("MEMFIT_GPU_SERIAL") == "1":
            try:
                p.wait(timeout=dl.left())
            except subprocess.TimeoutExpired:
                p.kill()
    for name, p, wout, log in procs:
        try:
            rc = p.wait(timeout=dl.left())
            status = "ok" if rc == 0 else ("skipped" if rc == SKIP else "failed")
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc, status = None, "timeout"
        log.close()
        w = read_json(wout) or {}
        text = (work / f"{name}.log").read_text(errors="replace")
        print(f"--- {name}: {status}\n{text[-2000:]}")
        res["runs"][name] = {"status": status, "rc": rc, "skipped": w.get("skipped"), "result": w,
                             "last_line": ([x for x in text.splitlines() if x.strip()][-1:] or [""])[0][:300]}
    statuses = [r["status"] for r in res["runs"].values()]
    bad = [n for n, r in res["runs"].items() if r["status"] in ("failed", "timeout")]
    if bad:
        res["status"] = "failed"
        res["reason"] = "; ".join(f"{n}: {res['runs'][n]['status']} ({res['runs'][n]['last_line']})" for n in bad)
    elif all(x == "skipped" for x in statuses):
        res.update(status="skipped", skipped="no run applies here")
    else:
        res["status"] = "ok"
    return finish(out, res)


def snapshot_to_trace(snap: Dict[str, Any], path: Path, dev: int = 0) -> Dict[str, Any]:
    """A PyTorch memory snapshot's allocation trace as a memfit-replay trace
    (alloc ID BYTES STREAM / free ID; benchmarks/README.md, "The trace format").
    A block counts as freed at free_completed, when the allocator could reuse it."""
    traces = snap.get("device_traces") or []
    events = traces[dev] if len(traces) > dev else []
    live: Dict[int, str] = {}
    lines: List[str] = []
    n = dropped = 0
    for e in events:
        a = e.get("action")
        if a == "alloc":
            addr = int(e["addr"])
            if addr in live:
                lines.append(f"free {live.pop(addr)}")
            ident = f"b{n}"
            n += 1
            live[addr] = ident
            lines.append(f"alloc {ident} {int(e['size'])} {int(e.get('stream', 0) or 0)}")
        elif a == "free_completed":
            ident = live.pop(int(e["addr"]), None)
            if ident is None:
                dropped += 1  # allocated before the history began (or the ring buffer wrapped)
            else:
                lines.append(f"free {ident}")
    seg = snapshot_reserved(snap, dev)
    header = [f"# converted from a PyTorch memory snapshot by benchmarks/gpu/gpu_session.py",
              f"# native_peak_reserved_bytes={seg['peak_reserved_from_segments']} entries={seg['entries']} "
              f"dropped_frees={dropped}"]
    path.write_text("\n".join(header + lines) + "\n")
    return {"allocs": n, "dropped_frees": dropped, "still_live": len(live), **seg}


def _synthetic_snapshot() -> Dict[str, Any]:
    """A small hand-made snapshot (the dry run's stand-in for a CUDA one)."""
    ev: List[Dict[str, Any]] = [{"action": "segment_alloc", "addr": 0x1000_0000, "size": 20 * MiB, "stream": 0}]
    addr = 0x1000_0000
    for i in range(40):
        size = (1 + (i * 7) % 5) * MiB // 2
        ev.append({"action": "alloc", "addr": addr + i * 2 * MiB // 4, "size": size, "stream": 0})
        if i % 3 == 2:
            ev.append({"action": "free_requested", "addr": addr + (i - 1) * 2 * MiB // 4, "size": size, "stream": 0})
            ev.append({"action": "free_completed", "addr": addr + (i - 1) * 2 * MiB // 4, "size": size, "stream": 0})
    return {"segments": [], "device_traces": [ev]}


def step_traces(args: argparse.Namespace) -> int:
    """Issue 11 item 5: the native snapshots as memfit traces, replayed: memfit's reserved and
    the native-policy emulation's, against native's real peak reserved."""
    out = Path(args.out)
    snaps = Path(args.snapshots)
    traces = Path(args.traces)
    traces.mkdir(parents=True, exist_ok=True)
    dl = Deadline()
    replay = Path(args.build_dir) / "benchmarks" / "memfit-replay"
    res: Dict[str, Any] = {"step": "traces", "traces": {}}
    mem = read_json(Path(args.memory_result)) or {}
    helptext = subprocess.run([sys.executable, "-m", "memfit", "--help"], capture_output=True, text=True,
                              env=child_env(), cwd=REPO, timeout=60).stdout
    converter = "memfit trace-from-snapshot" if "trace-from-snapshot" in helptext else "gpu_session.snapshot_to_trace"
    res["converter"] = converter
    found = sorted(snaps.glob("*.pickle.gz"))
    if not found:
        if mode() == "gpu":
            res.update(status="failed", reason=f"no snapshots in {snaps} (the memory-runs step made none)")
            return finish(out, res)
        snap = _synthetic_snapshot()
        p = snaps / "synthetic.pickle.gz"
        snaps.mkdir(parents=True, exist_ok=True)
        with gzip.open(p, "wb") as f:
            pickle.dump(snap, f)
        found = [p]
        res["note"] = "dry run: no CUDA snapshots; a synthetic snapshot checks the conversion and the replay"
    for p in found:
        name = p.name[: -len(".pickle.gz")]
        entry: Dict[str, Any] = {"snapshot": p.name, "snapshot_bytes_gz": p.stat().st_size}
        trace = traces / f"{name}.mftrace"
        try:
            if converter.startswith("memfit "):
                raw = traces / f"{name}.pickle"
                with gzip.open(p, "rb") as f, raw.open("wb") as g:
                    shutil.copyfileobj(f, g)
                r = run_child(["-m", "memfit", "trace-from-snapshot", str(raw), "-o", str(trace)], child_env(),
                              min(dl.left(), 120))
                raw.unlink(missing_ok=True)
                entry["convert"] = r
                with gzip.open(p, "rb") as f:
                    entry.update(snapshot_reserved(pickle.load(f)))
                if r["status"] != "ok":
                    raise RuntimeError(f"memfit trace-from-snapshot: {r['status']}: {r.get('last_line')}")
            else:
                with gzip.open(p, "rb") as f:
                    snap = pickle.load(f)
                entry.update(snapshot_to_trace(snap, trace))
        except Exception as e:
            entry["error"] = exc_info(e)
            res["traces"][name] = entry
            continue
        run_result = (mem.get("runs", {}).get(name, {}).get("result") or {}).get("memory") or {}
        entry["native_real_peak_reserved"] = run_result.get("peak_reserved")
        entry["native_real_peak_allocated"] = run_result.get("peak_allocated")
        if replay.exists() and dl.left() > 2:
            try:
                done = subprocess.run([str(replay), str(trace), "--compare", "native", "--json", "--repeat", "1"],
                                      capture_output=True, text=True, timeout=min(dl.left(), 120))
                j = json.loads(done.stdout) if done.stdout.strip() else {}
                entry["replay"] = {k: j.get(k) for k in (
                    "peak_allocated_bytes", "peak_reserved_bytes", "fragmentation", "native_peak_reserved_bytes",
                    "native_fragmentation", "native_expandable_peak_reserved_bytes", "reserved_vs_native",
                    "reserved_vs_native_expandable", "events")}
                entry["replay_rc"] = done.returncode
                if done.returncode != 0:
                    entry["replay_error"] = done.stderr[-400:]
                real = entry["native_real_peak_reserved"] or entry.get("peak_reserved_from_segments")
                if name == "synthetic":
                    real = None  # a made-up snapshot: no native run to hold the emulation to
                emu_key = "native_expandable_peak_reserved_bytes" if "expandable" in name else "native_peak_reserved_bytes"
                emu = j.get(emu_key)
                if real and emu:
                    entry["emulation_over_real"] = round(emu / real, 4)
                    entry["emulation_within_5_percent"] = abs(emu / real - 1) <= 0.05
                if real and j.get("peak_reserved_bytes"):
                    entry["memfit_replay_over_native_real"] = round(j["peak_reserved_bytes"] / real, 4)
            except (subprocess.TimeoutExpired, ValueError) as e:
                entry["replay_error"] = str(e)
        else:
            entry["replay_error"] = f"{replay} not built" if not replay.exists() else "no time left"
        with trace.open("rb") as f, gzip.open(str(trace) + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
        trace.unlink()
        entry["trace_gz"] = trace.name + ".gz"
        entry["trace_bytes_gz"] = os.path.getsize(str(trace) + ".gz")
        res["traces"][name] = entry
    errors = [n for n, e in res["traces"].items() if e.get("error") or e.get("replay_error") or e.get("replay_rc")]
    res["status"] = "failed" if errors else "ok"
    if errors:
        res["reason"] = "trouble with " + ", ".join(errors)
    return finish(out, res)


def step_plan_verify(args: argparse.Namespace) -> int:
    """Issue 11 item 4: memfit plan + memfit verify at the budget; then bisection probes."""
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dl = Deadline()
    s = settings()
    dev = device()
    job = f"{Path(__file__)}:gpt2_job"
    env = child_env()
    env["MEMFIT_GPU_MODEL"] = s["model"]
    res: Dict[str, Any] = {"step": "plan-verify", "device": dev, "budget": s["plan_budget"], "model": s["model"],
                           "settings": s, "status": "failed"}
    plan_json, prof_json, ver_json = work / "plan.json", work / "profile.json", work / "verify.json"
    t0 = time.perf_counter()
    r = run_child(["-m", "memfit", "plan", "--job", job, "--device", dev, "--budget", s["plan_budget"],
                   "--batch-sizes", s["plan_batches"], "--steps", str(s["plan_steps"]), "--warmup-steps", "1",
                   "--out", str(plan_json), "--profile-out", str(prof_json)], env, dl.left() * 0.6,
                  work / "plan.log")
    res["plan_run"] = r
    res["memfit_seconds"] = round(time.perf_counter() - t0, 2)
    p = read_json(plan_json)
    if r["status"] != "ok" or not p:
        res["status"] = "timeout" if r["status"] == "timeout" else "failed"
        res["reason"] = f"memfit plan {r['status']}: {r.get('last_line')}"
        return finish(out, res)
    res["plan"] = {k: p.get(k) for k in ("batch_size", "predicted_peak_bytes", "predicted_reserved_bytes",
                                         "checkpoint_correction_bytes", "ladder_correction_bytes", "headroom", "headroom_rule", "usable_bytes",
                                         "model_error", "model_error_reserved", "predicted_step_seconds")}
    res["plan"]["checkpointed"] = [l.get("name") for l in p.get("layers", []) if l.get("checkpoint")]
    res["plan"]["baselines"] = {k: (v or {}).get("batch_size") for k, v in (p.get("baselines") or {}).items()}
    r = run_child(["-m", "memfit", "verify", "--job", job, "--plan", str(plan_json), "--budget", s["plan_budget"],
                   "--device", dev, "--json", "--steps", "3"], env, dl.left() * 0.5, work / "verify.log")
    res["verify_run"] = r
    try:
        v = json.loads((work / "verify.log").read_text().strip().splitlines()[-1])
        write_json(ver_json, v)
    except (ValueError, IndexError, OSError):
        v = None
    res["verify"] = v
    if v is None or r["status"] not in ("ok", "failed"):
        res["status"] = "timeout" if r["status"] == "timeout" else "failed"
        res["reason"] = f"memfit verify {r['status']}: {r.get('last_line')}"
        return finish(out, res)
    res["predicted_peak_error_percent"] = v.get("error_percent")
    res["predicted_reserved_error_percent"] = v.get("reserved_error_percent")
    pout = work / "probes.json"
    r = run_child([str(Path(__file__)), "worker-probes", "--out", str(pout), "--plan", str(plan_json), "--job", job,
                   "--budget", s["plan_budget"], "--count", str(s["probes"]), "--seconds", str(max(dl.left() - 8, 1))]
                  + (["--planned-fits"] if not v.get("oom") else []), env, dl.left(), work / "probes.log")
    res["probes_run"] = r
    res["probes"] = read_json(pout)
    res["status"] = "ok" if not v.get("oom") else "failed"
    if v.get("oom"):
        res["reason"] = f"the plan's verification ran out of memory: {v.get('error')}"
    elif r["status"] != "ok":
        res["status"] = "failed" if r["status"] != "timeout" else "timeout"
        res["reason"] = f"probes {r['status']}: {r.get('last_line')} (plan and verify completed)"
    return finish(out, res)


def step_findings(args: argparse.Namespace) -> int:
    """Issue 10's findings that only a GPU can show: benchmarks/gpu/cuda_findings.py (its own
    checks and pass criteria), called once per check so that a check that hangs costs only
    itself and the others' results survive the step's limit."""
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dl = Deadline()
    script = HERE / "cuda_findings.py"
    res: Dict[str, Any] = {"step": "cuda-findings", "script": str(script.relative_to(REPO)), "checks": {}}
    if not script.exists():
        res.update(status="skipped", skipped=f"{res['script']} is not in this checkout")
        return finish(out, res)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cuda_findings", script)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    names = list(mod.CHECKS)
    for name in names:
        left = dl.left()
        if left < 6:
            res["checks"][name] = {"status": "skipped", "reason": "the step's time ran out"}
            continue
        cmd = [str(script), "--only", name, "--out", str(work / name), "--build-dir", args.build_dir,
               "--timeout", str(round(min(args.check_timeout, left - 3), 1))]
        if mode() != "gpu":
            cmd.append("--dry-run")
        r = run_child(cmd, child_env(), left)
        got = (read_json(work / name / "cuda-findings.json") or {}).get(name)
        res["checks"][name] = got or {"status": "error", "harness": r}
        write_json(out, {**res, "status": "failed", "reason": "incomplete"})
    counts: Dict[str, int] = {}
    for c in res["checks"].values():
        counts[c.get("status", "?")] = counts.get(c.get("status", "?"), 0) + 1
    res["counts"] = counts
    not_passed = [n for n, c in res["checks"].items() if c.get("status") not in ("pass", "skipped")]
    res["not_passed"] = not_passed
    # A check that ran and did not pass is a finding for the report, not a broken step.
    broken = [n for n, c in res["checks"].items() if c.get("status") in ("error", "timeout")]
    res["status"] = "failed" if broken else "ok"
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if broken:
        res["reason"] = f"checks that did not finish: {', '.join(broken)} ({summary})"
    else:
        res["note"] = summary + (f"; not passed: {', '.join(not_passed)}" if not_passed else "")
    return finish(out, res)


# ------------------------------------------------- helpers of run.sh's shell steps


def ctest_summary(args: argparse.Namespace) -> int:
    """ctest's JUnit file as counts; --require-gpu: a CudaTest that skipped is a failure."""
    out = Path(args.out)
    res: Dict[str, Any] = {"step": args.step, "rc": args.rc, "tests": {}}
    try:
        root = ET.parse(args.junit).getroot()
        for tc in root.iter("testcase"):
            name = tc.get("name", "?")
            if tc.find("failure") is not None or tc.get("status") == "fail":
                st = "failed"
            elif tc.find("skipped") is not None or tc.get("status") in ("notrun", "disabled"):
                st = "skipped"
            else:
                st = "passed"
            entry: Dict[str, Any] = {"status": st, "seconds": float(tc.get("time", 0) or 0)}
            if st == "skipped":
                text = (tc.findtext("system-out") or "")
                m = re.search(r"SKIPPED \]?[^\n]*\n?([^\n]*)", text)
                reason = next((line.strip() for line in text.splitlines() if "Skipped" in line or "no CUDA" in line), "")
                entry["reason"] = (reason or (m.group(1) if m else ""))[:200]
            res["tests"][name] = entry
    except (OSError, ET.ParseError) as e:
        res["junit_error"] = str(e)
    if not res["tests"] and args.log and Path(args.log).exists():  # no JUnit (old ctest): read its log
        for m in re.finditer(r"Test\s+#\d+: (\S+) \.+\s*(\*+)?\s*(Passed|Skipped|Not Run|\S+)",
                             Path(args.log).read_text(errors="replace")):
            word = m.group(3)
            st = "passed" if word == "Passed" else ("skipped" if word in ("Skipped", "Not") else "failed")
            res["tests"][m.group(1)] = {"status": st, "seconds": None}
        res["parsed_from"] = "log"
    counts = {k: sum(1 for t in res["tests"].values() if t["status"] == k) for k in ("passed", "failed", "skipped")}
    res.update(counts)
    res["total"] = len(res["tests"])
    problems = []
    if args.rc != 0:
        problems.append(f"ctest exited {args.rc}")
    if counts["failed"]:
        problems.append("failed: " + ", ".join(n for n, t in res["tests"].items() if t["status"] == "failed")[:300])
    if not res["tests"]:
        problems.append("no tests ran")
    skipped_cuda = [n for n, t in res["tests"].items() if t["status"] == "skipped" and n.startswith("CudaTest.")]
    if args.require_gpu and skipped_cuda:
        problems.append(f"{len(skipped_cuda)} CudaTest tests skipped on a machine with a GPU")
    res["status"] = "failed" if problems else "ok"
    if problems:
        res["reason"] = "; ".join(problems)
    elif counts["skipped"]:
        res["note"] = f"{counts['skipped']} skipped" + (" (no GPU: expected in a dry run)" if not args.require_gpu else "")
    if args.step == "ctest-all" and os.environ.get("MEMFIT_GPU_FULL_CTEST") != "1":
        scope = "without the host-memory stress tests" if mode() == "gpu" else "dry run: the emulated-cuda label only"
        res["note"] = scope + (f"; {res['note']}" if res.get("note") else "")
    print(f"{args.step}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
          f" of {res['total']}")
    return finish(out, res)


def sanitizer_summary(args: argparse.Namespace) -> int:
    out = Path(args.out)
    text = Path(args.log).read_text(errors="replace") if Path(args.log).exists() else ""
    m = re.findall(r"ERROR SUMMARY:\s*(\d+) error", text)
    passed = re.findall(r"\[\s*PASSED\s*\]\s*(\d+) test", text)
    skipped = re.findall(r"\[\s*SKIPPED\s*\]\s*(\d+) test", text)
    failed = re.findall(r"\[\s*FAILED\s*\]\s*(\d+) test", text)
    res: Dict[str, Any] = {"step": "sanitizer", "rc": args.rc, "tool": "memcheck",
                           "errors": int(m[-1]) if m else None, "tests_passed": int(passed[-1]) if passed else None,
                           "tests_skipped": int(skipped[-1]) if skipped else 0,
                           "tests_failed": int(failed[-1]) if failed else 0, "version": args.version}
    problems = []
    if res["errors"] is None:
        problems.append("no ERROR SUMMARY line (did compute-sanitizer run?)")
    elif res["errors"]:
        problems.append(f"{res['errors']} memcheck errors")
    if res["tests_failed"]:
        problems.append(f"{res['tests_failed']} tests failed")
    if not res["tests_passed"]:
        problems.append("no test passed under the sanitizer")
    if args.rc not in (0,) and not problems:
        problems.append(f"exit status {args.rc}")
    res["status"] = "failed" if problems else "ok"
    if problems:
        res["reason"] = "; ".join(problems)
    print(f"sanitizer: errors={res['errors']} passed={res['tests_passed']} skipped={res['tests_skipped']}")
    return finish(out, res)


# -------------------------------------------------------------------- report


def _aims(results: Dict[str, Any], steps: List[Dict[str, Any]], dry: bool) -> List[Dict[str, Any]]:
    """Issue 11's acceptance aims, each met, not met, or not measured (with why)."""
    aims: List[Dict[str, Any]] = []
    why = {s["name"]: f"step {s['name']} {s['status']}" + (f": {s['reason']}" if s["reason"] else "") for s in steps}

    def add(aim: str, met: Optional[bool], value: Any, detail: str) -> None:
        aims.append({"aim": aim, "met": met, "value": value, "detail": detail,
                     "measured_on": "cpu (dry run)" if dry else "gpu"})

    tn = ((results.get("train-native") or {}).get("worker") or {}).get("main") or {}
    tm = ((results.get("train-memfit") or {}).get("worker") or {}).get("main") or {}
    if tn.get("median_seconds") and tm.get("median_seconds"):
        r = tm["median_seconds"] / tn["median_seconds"]
        add("step time within 2% of native or better", r <= 1.02, round(r, 4),
            f"median step {tm['median_seconds'] * 1e3:.2f} ms under memfit vs {tn['median_seconds'] * 1e3:.2f} ms native")
    else:
        add("step time within 2% of native or better", None, None,
            "; ".join(why.get(n, f"{n} not run") for n in ("train-native", "train-memfit")))
    runs = (results.get("memory-runs") or {}).get("runs") or {}
    vm = ((runs.get("varlen-memfit") or {}).get("result") or {}).get("memory") or {}
    vn = ((runs.get("varlen-native") or {}).get("result") or {}).get("memory") or {}
    if vm.get("reserved_over_allocated") and vn.get("reserved_over_allocated"):
        add("reserved/allocated below native's on the varying run",
            vm["reserved_over_allocated"] < vn["reserved_over_allocated"], vm["reserved_over_allocated"],
            f"memfit {vm['reserved_over_allocated']} vs native {vn['reserved_over_allocated']}")
    else:
        add("reserved/allocated below native's on the varying run", None, vm.get("reserved_over_allocated"),
            "native's varying run is missing" + (" (PyTorch's CPU allocator keeps no reserved figure)" if dry else ""))
    pv = results.get("plan-verify") or {}
    e = pv.get("predicted_peak_error_percent")
    e = round(e, 3) if isinstance(e, (int, float)) else None
    add("predicted peak within 5%", None if e is None else abs(e) <= 5, e,
        "measured peak against the plan's predicted peak (memfit verify)" if e is not None
        else why.get("plan-verify", "plan-verify not run"))
    sz = results.get("sanitizer") or {}
    add("no compute-sanitizer error", None if sz.get("errors") is None else sz["errors"] == 0, sz.get("errors"),
        "memcheck on the CUDA gtests" + (f" ({sz['reason']})" if sz.get("reason") else "")
        if sz else why.get("sanitizer", "sanitizer not run"))
    tr = (results.get("traces") or {}).get("traces") or {}
    within = {n: t.get("emulation_over_real") for n, t in tr.items() if t.get("emulation_over_real") is not None}
    if within and not dry:
        add("native-policy emulation within 5% of native's real reserved", all(abs(v - 1) <= 0.05 for v in within.values()),
            within, "memfit-replay --compare native on the converted snapshots, against the run's max_memory_reserved")
    else:
        add("native-policy emulation within 5% of native's real reserved", None, within or None,
            "needs CUDA snapshots" if dry else "no converted snapshot was replayed")
    return aims


def report(args: argparse.Namespace) -> int:
    """gpu-report.json and gpu-report.md from run.sh's step table and the steps' results."""
    work = Path(args.work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: List[Dict[str, Any]] = []
    for line in (work / "steps.tsv").read_text().splitlines() if (work / "steps.tsv").exists() else []:
        f = line.split("\t")
        if len(f) < 7:
            continue
        steps.append({"name": f[0], "status": f[1], "rc": int(f[2]) if f[2].lstrip("-").isdigit() else None,
                      "seconds": float(f[3]), "budget_seconds": int(f[4]), "limit_seconds": int(float(f[5])),
                      "reason": f[6], "log": f"logs/{f[0]}.log"})
    results: Dict[str, Any] = {}
    for p in sorted((work / "results").glob("*.json")):
        if p.name.endswith(".worker.json"):
            continue
        results[p.stem] = read_json(p)
    for st in steps:  # a step's own words about why it failed or skipped beat its log's last line
        r = results.get(st["name"]) or {}
        why = r.get("skipped") if st["status"] == "skipped" else r.get("reason")
        if st["status"] != "ok" and why:
            st["reason"] = str(why)[:300]
        elif st["status"] == "ok" and r.get("note"):
            st["reason"] = str(r["note"])[:300]
    env = results.pop("env", None) or {}
    dry = mode() != "gpu"
    budget = [{"name": r[0], "gpu_seconds": int(r[1]), "dry_run_seconds": int(r[2]), "what": r[3]}
              for r in json.loads(args.budget_json)]
    data: Dict[str, Any] = {
        "format": "memfit-gpu-report", "version": 1, "mode": mode(),
        "date": env.get("date") or time.strftime("%Y-%m-%d", time.gmtime()),
        "started_utc": args.started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(float(args.wall), 1),
        "session_budget_seconds": args.total, "budget_table": budget,
        "budget_sum_seconds": sum(b["gpu_seconds" if mode() == "gpu" else "dry_run_seconds"] for b in budget),
        "gpu_budget_sum_seconds": sum(b["gpu_seconds"] for b in budget),
        "device": env.get("device"), "gpus": env.get("gpus"), "host": env.get("host"), "versions": env.get("versions"),
        "build_dir": args.build_dir, "options": args.options,
        "steps": steps, "results": results, "aims": _aims(results, steps, dry),
    }
    steps.append({"name": "report", "status": "ok", "rc": 0, "seconds": None, "budget_seconds": None,
                  "limit_seconds": None, "reason": "this report (run.sh falls back to the step table if it fails)",
                  "log": "logs/report.log"})
    data["summary"] = {s: sum(1 for x in steps if x["status"] == s) for s in ("ok", "failed", "timeout", "skipped")}
    write_json(out / "gpu-report.json", data)
    (out / "gpu-report.md").write_text(markdown(data))
    print(markdown(data))
    return 0


def _pct(x: Optional[float]) -> str:
    return f"{x:+.2f}%" if isinstance(x, (int, float)) else "n/a"


def _fmt_ms(x: Optional[float]) -> str:
    return f"{x * 1e3:.2f} ms" if x else "n/a"


def markdown(d: Dict[str, Any]) -> str:
    v = d.get("versions") or {}
    dev = d.get("device") or {}
    res = d.get("results") or {}
    L: List[str] = []
    title = "memfit on a GPU: the prepared session" if d["mode"] == "gpu" else "memfit GPU session: DRY RUN on CPU"
    L += [f"# {title} ({d['date']})", ""]
    if d["mode"] != "gpu":
        L += ["This is a dry run (`benchmarks/gpu/run.sh --dry-run`): no GPU; every figure below is from the CPU, at "
              "tiny sizes, and says only that the session starts and reports. None of it is a GPU result.", ""]
    L += [f"- device: {dev.get('name')} (capability {dev.get('capability')}, "
          f"{human(dev.get('total_memory'))}, {dev.get('multiprocessors')} SMs, count {dev.get('count')})",
          f"- driver {v.get('driver')}, CUDA (driver) {v.get('cuda_driver_version')}, nvcc {v.get('nvcc')}, "
          f"PyTorch {v.get('torch')} (CUDA {v.get('torch_cuda')}, cuDNN {v.get('cudnn')})",
          f"- Python {v.get('python')}, {v.get('gcc')}, {v.get('cmake')}, compute-sanitizer {v.get('compute_sanitizer')}",
          f"- memfit commit {v.get('git_commit')} ({v.get('git_dirty_files')} files changed; from {v.get('git_commit_from')})",
          f"- host: {(d.get('host') or {}).get('os')}, {(d.get('host') or {}).get('cpus')} CPUs, kernel "
          f"{(d.get('host') or {}).get('kernel')}",
          f"- session {d['wall_seconds']} s of a {d['session_budget_seconds']} s budget (steps' budgets sum to "
          f"{d['budget_sum_seconds']} s); steps: " + ", ".join(f"{n} {k}" for k, n in d["summary"].items()),
          "", "## Steps", "",
          "| step | status | seconds | budget | note |", "| --- | --- | ---: | ---: | --- |"]
    for s in d["steps"]:
        if s["name"] == "report":
            continue
        note = s["reason"].replace("|", "/")[:160]
        L.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['budget_seconds']} | {note} |")
    L += ["", "## Aims (issue 11)", "", "| aim | met | value | detail |", "| --- | --- | --- | --- |"]
    for a in d["aims"]:
        met = {True: "met", False: "NOT met", None: "not measured"}[a["met"]]
        L.append(f"| {a['aim']} | {met} | {a['value']} | {a['detail']} ({a['measured_on']}) |")
    # training runs
    L += ["", "## Training steps (issue 11 item 2)", "",
          "| allocator | median step | small-batch median | peak allocated | peak reserved | reserved/allocated |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = ((res.get("train-native") or {}).get("worker") or {}).get("main", {}).get("median_seconds")
    for alloc in ("native", "memfit", "async"):
        r = res.get(f"train-{alloc}") or {}
        w = r.get("worker") or {}
        m, sm, mem = w.get("main") or {}, w.get("small") or {}, w.get("memory") or {}
        ratio = f" ({m['median_seconds'] / base:.3f}x)" if base and m.get("median_seconds") else ""
        st = next((x for x in d["steps"] if x["name"] == f"train-{alloc}"), {})
        status = "" if st.get("status") == "ok" else f" [{st.get('status')}: {st.get('reason', '')}]"
        L.append(f"| {alloc}{status} | {_fmt_ms(m.get('median_seconds'))}{ratio} | {_fmt_ms(sm.get('median_seconds'))} | "
                 f"{human(mem.get('peak_allocated'))} | {human(mem.get('peak_reserved'))} | "
                 f"{mem.get('reserved_over_allocated')} |")
    wm = (res.get("train-memfit") or {}).get("worker") or {}
    if wm.get("oom"):
        o = wm["oom"]
        L += ["", f"OOM under memfit's capacity ({human(o.get('capacity'))}): big tensor -> "
              f"`{(o.get('big_tensor') or {}).get('type')}`, oversized step -> `{(o.get('big_step') or {}).get('type')}`; "
              f"torch.OutOfMemoryError both: {o.get('torch_oom_type')}; the loop went on: {o.get('loop_goes_on')}"]
    if wm.get("stats_agree"):
        sa = wm["stats_agree"]
        L += ["", f"torch.cuda.memory_* against memfit's own figures: all equal: {sa.get('all_equal')}"
              + (f"; {sa['skipped']}" if sa.get("skipped") else "")]
    if wm:
        L += ["", f"memfit route: {wm.get('autoload_route')}; CUDA initialised by `import torch`: "
              f"{wm.get('cuda_initialized_after_import')}; allocator backend: {wm.get('allocator_backend')}; "
              f"granule: {wm.get('memfit_granule')}"]
    # memory runs
    mr = (res.get("memory-runs") or {}).get("runs") or {}
    L += ["", "## Memory runs (issue 11 item 3, and the snapshots of item 5)", "",
          "| run | status | peak allocated | peak reserved | reserved/allocated |", "| --- | --- | ---: | ---: | ---: |"]
    for name, r in mr.items():
        mem = (r.get("result") or {}).get("memory") or {}
        st = r["status"] + (f": {r.get('skipped')}" if r.get("skipped") else "")
        L.append(f"| {name} | {st} | {human(mem.get('peak_allocated'))} | {human(mem.get('peak_reserved'))} | "
                 f"{mem.get('reserved_over_allocated')} |")
    tr = res.get("traces") or {}
    if tr.get("traces"):
        L += ["", f"## Traces (issue 11 item 5; converter: {tr.get('converter')})", "",
              "| trace | native real peak reserved | emulation / real | memfit replay / native real |",
              "| --- | ---: | ---: | ---: |"]
        for name, t in tr["traces"].items():
            L.append(f"| {name} | {human(t.get('native_real_peak_reserved') or t.get('peak_reserved_from_segments'))} | "
                     f"{t.get('emulation_over_real')} | {t.get('memfit_replay_over_native_real')} |")
    pv = res.get("plan-verify") or {}
    if pv.get("plan"):
        p, vv, pr = pv["plan"], pv.get("verify") or {}, pv.get("probes") or {}
        L += ["", f"## Plan and verify (issue 11 item 4; budget {pv.get('budget')}, model {pv.get('model')})", "",
              f"- planned batch {p.get('batch_size')}, checkpointed {len(p.get('checkpointed') or [])} layers, "
              f"predicted peak {human(p.get('predicted_peak_bytes'))}, reserved {human(p.get('predicted_reserved_bytes'))}",
              f"- measured peak {human(vv.get('measured_peak_bytes'))} ({_pct(vv.get('error_percent'))} against the "
              f"prediction), reserved {human(vv.get('measured_peak_reserved_bytes'))} "
              f"({_pct(vv.get('reserved_error_percent'))}), OOM {vv.get('oom')}",
              f"- probes: {[(x.get('batch'), x.get('fits')) for x in pr.get('probes', [])]}: largest fit "
              f"{pr.get('largest_fit')}, smallest OOM {pr.get('smallest_oom')}, planned/largest "
              f"{pr.get('planned_over_largest')}; memfit answered in {pv.get('memfit_seconds')} s"]
    ck = (res.get("cuda-findings") or {}).get("checks") or {}
    if ck:
        L += ["", "## CUDA findings (issue 10's, by benchmarks/gpu/cuda_findings.py)", "",
              "| check | status | seconds | seen |", "| --- | --- | ---: | --- |"]
        for name, c in ck.items():
            seen = c.get("seen") or c.get("reason") or c.get("stderr") or c.get("harness")
            L.append(f"| {name} | {c.get('status')} | {c.get('seconds', '')} | "
                     f"{json.dumps(seen, default=str)[:220].replace('|', '/')} |")
    for key in ("ctest-cuda", "ctest-all", "sanitizer"):
        r = res.get(key)
        if r:
            L.append("")
            if key == "sanitizer":
                L.append(f"**{key}**: memcheck errors {r.get('errors')}, tests passed {r.get('tests_passed')}, "
                         f"skipped {r.get('tests_skipped')}" + (f"; {r.get('skipped')}" if r.get("skipped") else ""))
            else:
                L.append(f"**{key}**: {r.get('passed')} passed, {r.get('failed')} failed, {r.get('skipped')} skipped "
                         f"of {r.get('total')}" + (f"; {r['reason']}" if r.get("reason") else ""))
    L += ["", "Logs: `gpu-logs.tar.gz` (one log per step, every result JSON); traces and snapshots: "
          "`gpu-traces.tar.gz`. Commit as `benchmarks/results/gpu-<date>.md` / `.json` (benchmarks/gpu/README.md).", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    top = argparse.ArgumentParser(prog="gpu_session.py", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env"); p.add_argument("--out", required=True)
    p = sub.add_parser("train"); p.add_argument("--out", required=True)
    p.add_argument("--alloc", choices=("native", "memfit", "async"), required=True)
    p = sub.add_parser("memory-runs"); p.add_argument("--out", required=True); p.add_argument("--work", required=True)
    p.add_argument("--snapshots", required=True); p.add_argument("--serial", action="store_true")
    p = sub.add_parser("traces"); p.add_argument("--out", required=True); p.add_argument("--snapshots", required=True)
    p.add_argument("--traces", required=True); p.add_argument("--build-dir", required=True)
    p.add_argument("--memory-result", required=True)
    p = sub.add_parser("plan-verify"); p.add_argument("--out", required=True); p.add_argument("--work", required=True)
    p = sub.add_parser("cuda-findings"); p.add_argument("--out", required=True); p.add_argument("--work", required=True)
    p.add_argument("--build-dir", required=True); p.add_argument("--check-timeout", type=float, default=30.0)
    p = sub.add_parser("ctest-summary"); p.add_argument("--out", required=True); p.add_argument("--junit", required=True)
    p.add_argument("--rc", type=int, required=True); p.add_argument("--step", required=True)
    p.add_argument("--require-gpu", action="store_true"); p.add_argument("--log")
    p = sub.add_parser("sanitizer-summary"); p.add_argument("--out", required=True); p.add_argument("--log", required=True)
    p.add_argument("--rc", type=int, required=True); p.add_argument("--version", default=None)
    p = sub.add_parser("report"); p.add_argument("--work", required=True); p.add_argument("--out", required=True)
    p.add_argument("--budget-json", required=True); p.add_argument("--total", type=int, required=True)
    p.add_argument("--started", required=True); p.add_argument("--wall", required=True)
    p.add_argument("--build-dir", required=True); p.add_argument("--options", default="")
    p = sub.add_parser("worker-train"); p.add_argument("--out", required=True)
    p = sub.add_parser("worker-memory"); p.add_argument("--out", required=True)
    p.add_argument("--pattern", choices=("fixed", "varlen"), required=True); p.add_argument("--snapshot")
    p = sub.add_parser("worker-probes"); p.add_argument("--out", required=True); p.add_argument("--plan", required=True)
    p.add_argument("--job", required=True); p.add_argument("--budget", required=True)
    p.add_argument("--count", type=int, required=True); p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--planned-fits", action="store_true")
    args = top.parse_args(argv)
    sys.path.insert(0, str(PYDIR))
    fn = {"env": step_env, "train": step_train, "memory-runs": step_memory_runs, "traces": step_traces,
          "plan-verify": step_plan_verify, "cuda-findings": step_findings, "ctest-summary": ctest_summary,
          "sanitizer-summary": sanitizer_summary, "report": report, "worker-train": worker_train,
          "worker-memory": worker_memory, "worker-probes": worker_probes}[args.cmd]
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
