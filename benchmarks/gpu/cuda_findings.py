"""cuda_findings.py — the CUDA-readiness findings that only a GPU can show, one
child process each, for the prepared GPU session (benchmarks/gpu/run.sh).

Each check starts a fresh Python with memfit switched on the way a user would
(PYTORCH_CUDA_ALLOC_CONF=backend:memfit,...), runs a few lines of PyTorch on the
GPU and prints one JSON line: {"ok": bool, ...what it saw}. The checks:

  oom_type        an allocation past memfit's capacity raises torch.cuda.OutOfMemoryError
  lazy_init       `import torch` under the autoload initializes no CUDA; the first tensor does
  fork            a child forked after `import torch` (memfit installed) can use CUDA
  child_process   a child started by subprocess runs memfit too (MEMFIT_INSTALL)
  graph_capture   torch.cuda.graph capture is refused with memfit's message, and memfit goes on
  cudnn_benchmark cudnn.benchmark=True is turned off with one line, and a conv runs
  backward_tags   backward's allocations (autograd's device thread) carry layer and phase
  record_stream   a tensor used on a side stream and freed is held back (deferred_frees)
  mem_get_info    torch.cuda.mem_get_info reports memfit's capacity, not the device's
  stats_keys      memory_stats() has the keys users read; memory_snapshot() answers
  import_order    `python -S` with torch imported before memfit: what PyTorch says (a record)
  alloc_cost      ns per malloc/free pair, memfit against PyTorch's allocator (same run)

--dry-run (no GPU) runs the harness and reports every check as skipped with the
reason, so CI knows it starts. Writes OUT/cuda-findings.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[2]

# Each check's Python processes memfit-autoload.pth from a site directory, as an
# installed package's site-packages would at start-up (the checkout is not pip-installed there).
PRELUDE = """
import json, os, sys, site
if os.environ.get("MEMFIT_FINDINGS_SITE") and "-S" not in sys.argv[1:2]:
    site.addsitedir(os.environ["MEMFIT_FINDINGS_SITE"])
def done(ok, **seen):
    print("FINDING " + json.dumps({"ok": bool(ok), **seen}))
    sys.exit(0)
"""

CHECKS: Dict[str, str] = {
    "oom_type": """
        import torch, memfit
        try:
            torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
            done(False, why="no OOM past a 1 GiB capacity")
        except torch.cuda.OutOfMemoryError as e:
            x = torch.ones(1 << 20, device="cuda")  # the process goes on
            done(str(e).startswith("CUDA out of memory."), type=type(e).__name__, head=str(e).splitlines()[0][:200])
        except RuntimeError as e:
            done(False, type=type(e).__name__, head=str(e).splitlines()[0][:200], is_oom=memfit.is_out_of_memory(e))
    """,
    "lazy_init": """
        import torch, memfit, memfit._lib as L
        before = torch.cuda.is_initialized()
        created_before = bool(L.lib().memfit_plugin_allocator_if_created())
        x = torch.ones(1024, device="cuda")
        after = bool(L.lib().memfit_plugin_allocator_if_created())
        done(not before and not created_before and after and memfit.current() is not None,
             initialized_at_import=before, created_before=created_before, created_after=after)
    """,
    "fork": """
        import torch, memfit, multiprocessing as mp
        def child(q):
            try:
                y = torch.ones(1 << 20, device="cuda") * 2
                q.put(float(y.sum().item()))
            except Exception as e:
                q.put(repr(e))
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start(); p.join(60)
        got = q.get(timeout=5) if p.exitcode == 0 else f"exit {p.exitcode}"
        done(got == float(2 << 20), child=got)
    """,
    "child_process": """
        import subprocess, torch
        code = ("import os, site; site.addsitedir(os.environ['MEMFIT_FINDINGS_SITE']); "
                "import torch, memfit, json; x = torch.ones(1 << 20, device='cuda'); "
                "a = memfit.current(); print(json.dumps({'memfit': a is not None, "
                "'allocated': torch.cuda.memory_allocated(), 'intent': __import__('os').environ.get('MEMFIT_INSTALL')}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        seen = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {"stderr": r.stderr[-400:]}
        done(seen.get("memfit") and seen.get("allocated", 0) >= 4 << 20, **seen)
    """,
    "graph_capture": """
        import torch
        x = torch.ones(1024, device="cuda")
        g = torch.cuda.CUDAGraph()
        message = None
        try:
            with torch.cuda.graph(g):
                y = x * 2
        except Exception as e:
            message = f"{type(e).__name__}: {e}"
        z = torch.ones(1 << 20, device="cuda").sum().item()  # memfit still works afterwards
        done(message is not None and "reduce-overhead" in message and z == float(1 << 20), message=(message or "")[:300])
    """,
    "cudnn_benchmark": """
        import io, contextlib, torch
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            torch.backends.cudnn.benchmark = True
        conv = torch.nn.Conv2d(3, 8, 3).cuda()
        y = conv(torch.randn(4, 3, 32, 32, device="cuda")).sum().item()
        done(not torch.backends.cudnn.benchmark, stderr=err.getvalue()[:300], benchmark=torch.backends.cudnn.benchmark)
    """,
    "backward_tags": """
        import torch, memfit
        from memfit import _lib
        model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)).cuda()
        tracker = memfit.track(model)
        a = memfit.current()
        a.trace_start()
        loss = model(torch.randn(256, 512, device="cuda")).square().mean()
        loss.backward()
        torch.cuda.synchronize()
        a.trace_stop()
        ev = a.trace_events()
        back = [e for e in ev if e.kind == 0 and e.phase == _lib.PHASE["backward"]]
        layers = sorted({memfit.allocator.layer_name(e.layer) for e in back})
        untagged = sum(1 for e in ev if e.kind == 0 and e.phase == _lib.PHASE["none"])
        done(bool(back) and any(l for l in layers), backward_allocs=len(back), layers=layers, untagged_allocs=untagged)
    """,
    "record_stream": """
        import torch, memfit
        side = torch.cuda.Stream()
        x = torch.ones(1 << 22, device="cuda")
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)
            y = x * 2
        x.record_stream(side)
        before = memfit.current().stats()["deferred_frees"]
        del x
        after = memfit.current().stats()["deferred_frees"]
        side.synchronize()
        done(after == before + 1, deferred_before=before, deferred_after=after)
    """,
    "mem_get_info": """
        import torch
        free, total = torch.cuda.mem_get_info()
        done(total <= 1 << 30 and 0 < free <= total, free=free, total=total)
    """,
    "stats_keys": """
        import torch
        x = torch.ones(1 << 20, device="cuda")
        s = torch.cuda.memory_stats()
        want = ["allocated_bytes.all.current", "allocated_bytes.large_pool.current", "allocated_bytes.small_pool.current",
                "reserved_bytes.all.peak", "inactive_split_bytes.all.current", "num_alloc_retries", "num_ooms"]
        missing = [k for k in want if k not in s]
        snap_ok = True
        try:
            snap = torch.cuda.memory_snapshot()
        except Exception as e:
            snap_ok = f"{type(e).__name__}: {e}"[:200]
        acc = None
        try:
            acc = torch.accelerator.memory_allocated()
        except Exception as e:
            acc = f"{type(e).__name__}: {e}"[:200]
        done(not missing and snap_ok is True and acc == s["allocated_bytes.all.current"],
             missing=missing, snapshot=snap_ok, accelerator_allocated=acc)
    """,
    "alloc_cost": """
        import subprocess, torch
        code = ("import time, torch; torch.ones(1, device='cuda'); n = 20000; t = time.perf_counter()\\n"
                "for _ in range(n):\\n    x = torch.empty(4096, dtype=torch.uint8, device='cuda'); del x\\n"
                "torch.cuda.synchronize(); print((time.perf_counter() - t) / n * 1e9)")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "MEMFIT_INSTALL", "MEMFIT_CONF")}
        native = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      timeout=120).stdout.split()[-1])
        x = torch.ones(1, device="cuda")
        n = 20000
        t = __import__("time").perf_counter()
        for _ in range(n):
            x = torch.empty(4096, dtype=torch.uint8, device="cuda"); del x
        torch.cuda.synchronize()
        mine = (__import__("time").perf_counter() - t) / n * 1e9
        done(True, memfit_ns=round(mine, 1), native_ns=round(native, 1), ratio=round(mine / native, 3))
    """,
}

# How each check's process starts: extra environment, and python flags.
ENV = {name: {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit,capacity:1GiB"} for name in CHECKS}
FLAGS = {name: [] for name in CHECKS}

IMPORT_ORDER = """
    import sys, site
    sys.path.extend(site.getsitepackages())   # -S: no .pth ran; torch first, then memfit
    try:
        import torch
        x = torch.ones(1, device="cuda")
        done(True, outcome="torch imported and allocated with backend:memfit unstripped", torch=torch.__version__)
    except Exception as e:  # a record of what PyTorch says, for the docs' routes table
        done(True, outcome="PyTorch refused at import or first use", error=f"{type(e).__name__}: {e}"[:300])
"""
CHECKS["import_order"] = IMPORT_ORDER
ENV["import_order"] = {"PYTORCH_CUDA_ALLOC_CONF": "backend:memfit"}
FLAGS["import_order"] = ["-S"]


def run_check(name: str, build_dir: Optional[str], timeout: float) -> Dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "bindings" / "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if build_dir:
        env["MEMFIT_BUILD_DIR"] = build_dir
    env.update(ENV[name])
    site_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"memfit-findings-site-{os.getpid()}"
    site_dir.mkdir(exist_ok=True)
    (site_dir / "memfit-autoload.pth").write_text((REPO / "bindings/python/memfit-autoload.pth").read_text())
    env["MEMFIT_FINDINGS_SITE"] = str(site_dir)
    code = PRELUDE + textwrap.dedent(CHECKS[name])
    if "-S" in FLAGS[name]:
        code = code.replace('"-S" not in sys.argv[1:2]', "False")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, *FLAGS[name], "-c", code], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
    seconds = round(time.perf_counter() - t0, 1)
    lines = [x for x in r.stdout.splitlines() if x.startswith("FINDING ")]
    if not lines:
        return {"status": "error", "seconds": seconds, "exit": r.returncode, "stderr": r.stderr[-800:]}
    seen = json.loads(lines[-1][len("FINDING "):])
    ok = seen.pop("ok")
    return {"status": "pass" if ok else "fail", "seconds": seconds, "seen": seen, "stderr": r.stderr[-400:]}


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--build-dir", default=os.environ.get("MEMFIT_BUILD_DIR"))
    ap.add_argument("--dry-run", action="store_true", help="no GPU: report each check as skipped")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per check (default 60)")
    ap.add_argument("--only", help="comma-separated check names")
    args = ap.parse_args(argv)
    names = [n for n in CHECKS if not args.only or n in args.only.split(",")]
    results: Dict[str, object] = {}
    for name in names:
        if args.dry_run:
            results[name] = {"status": "skipped", "reason": "--dry-run: needs a CUDA GPU"}
        else:
            results[name] = run_check(name, args.build_dir, args.timeout)
        print(f"{name:16s} {results[name]['status']}", flush=True)  # type: ignore[index]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda-findings.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [n for n, r in results.items() if r["status"] not in ("pass", "skipped")]  # type: ignore[index]
    print(f"cuda findings: {len(names) - len(failed)} of {len(names)} passed or skipped; not passed: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
