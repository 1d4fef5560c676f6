"""The command line: `python3 -m memfit profile|report|plan|verify|noise-scale|chinchilla|demo|env ...`.
Bad input exits 2 with one line naming what was wrong; nothing fits exits 3."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Union

from ._lib import MemfitError, NothingFitsError, is_out_of_memory, parse_size


def _batch_sizes(text: str, flag: str = "--batch-sizes") -> List[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected integers such as 4,8") from None
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected positive integers such as 4,8")
    return sizes


def _timing_batches(text: str) -> Optional[List[int]]:
    if text == "auto":
        return None
    if text == "none":
        return []
    return _batch_sizes(text, "--timing-batches")


def _precisions(text: str) -> List[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for p in items:
        if p not in ("fp32", "bf16", "fp16"):
            raise argparse.ArgumentTypeError(f"--precisions: unknown precision {p!r} (fp32, bf16, fp16)")
    return items


def _count(least: int):
    """An argparse type: an integer >= least."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {least}")
        return n

    return parse


def _number(what: str, least: float = 0.0, strict: bool = False):
    """An argparse type: a finite number >= least (> least when strict)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > least if strict else value >= least) or value == float("inf"):  # false for nan
            bound = f"> {least:g}" if strict else f">= {least:g}"
            raise argparse.ArgumentTypeError(f"{what} {text!r}: expected a finite number {bound}")
        return value

    return parse


def _size(text: str) -> int:
    try:
        return parse_size(text, "size")
    except MemfitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _headroom(text: str) -> Union[float, str]:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:  # also false for nan
        raise argparse.ArgumentTypeError(f"--headroom {text!r}: expected a fraction in [0, 1) or auto")
    return value


def _add_profile_args(p: argparse.ArgumentParser, default_sizes: str, job_required: bool = True,
                      precisions_help: str = "fp32,bf16,fp16 (default fp32)") -> None:
    p.add_argument("--job", required=job_required, help="FILE.py:FUNC or package.module:FUNC returning memfit.Job")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=_batch_sizes(default_sizes),
                   help=f"batch sizes to measure (default {default_sizes})")
    p.add_argument("--precisions", type=_precisions, help=precisions_help)
    p.add_argument("--steps", type=_count(1), default=3, help="measured steps per setting (default 3)")
    p.add_argument("--warmup-steps", type=_count(0), default=2)
    p.add_argument("--capacity", type=_size, help="memfit's capacity while profiling (e.g. 8GiB)")
    p.add_argument("--no-selective", dest="selective", action="store_false",
                   help="no selective activation checkpointing: profile does not measure it, plan does not choose it")
    p.add_argument("--timing-batches", type=_timing_batches, default=None, metavar="auto|none|B,B,...",
                   help="batch sizes timed without the tracer, which the plan's step times are calibrated to "
                        "(default auto: the profiled sizes, then doublings of the largest until a step takes "
                        "0.25 s and its peak's excess over the profiled line stops rising, and between points whose "
                        "memory errors disagree; "
                        "none: no calibration and no ladder check)")
    p.add_argument("--blocks", metavar="REGEX",
                   help="the modules the plan decides on: a regular expression matched against whole module "
                        "paths, e.g. 'model\\.layers\\.\\d+' (default: the model's repeated blocks)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python3 -m memfit", description="memfit: GPU memory for PyTorch training")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure a job and write its profile (JSON)")
    _add_profile_args(p, "2,4")
    p.add_argument("--out", required=True, help="where to write the profile JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print neither progress (stderr) nor the report")
    p.add_argument("--snapshot", help="also write the largest batch's run as a PyTorch memory snapshot "
                                      "(FILE.pickle, for python -m torch.cuda._memory_viz and pytorch.org/memory_viz)")

    r = sub.add_parser("report", help="print a profile's breakdown (or a plan's; --plot writes the PNG timeline); "
                                      "a plan for several ranks, or --strategy/--world-size, adds what one rank holds")
    r.add_argument("profile", help="a profile (memfit profile --out) or a plan (memfit plan --out)")
    r.add_argument("--strategy", choices=("ddp", "fsdp"),
                   help="with a profile: also show one rank of a DDP or FSDP2 run (needs --world-size)")
    r.add_argument("--world-size", type=_count(1), help="with --strategy: the number of ranks")
    r.add_argument("--batch-size", type=_count(1))
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    r.add_argument("--top", type=_count(1), default=10)
    r.add_argument("--plot", help="write the step's timeline to this PNG")

    pl = sub.add_parser("plan", help="profile a job (or read a profile) and plan it for a budget")
    _add_profile_args(pl, "2,4", job_required=False,
                      precisions_help="fp32,bf16,fp16: with --job, the precisions profiled (default fp32), each of "
                                      "which the plan may use; with --profile, those the plan may use (default: "
                                      "the profile's)")
    pl.add_argument("--profile", help="plan this profile instead of measuring a --job")
    pl.add_argument("--budget", type=_size, required=True, help="the device's memory budget, e.g. 40GiB")
    pl.add_argument("--objective", default="max-batch",
                    help="max-batch (default), throughput, or global-batch=N")
    pl.add_argument("--plan-precisions", type=_precisions, help=argparse.SUPPRESS)  # before --precisions did both
    pl.add_argument("--max-batch", type=_count(1))
    pl.add_argument("--headroom", type=_headroom,
                    help="fraction of the budget kept free on top of the reserve model, or auto (default: "
                         "1%% with page-mapped pools, 25%% with segments, + the model's self-check error)")
    pl.add_argument("--noise-scale", metavar="B|FILE.json",
                    help="the gradient noise scale B_simple (a number, or the JSON of noise-scale --json): the "
                         "plan states the critical batch beside its own and caps the learning-rate suggestion at it")
    pl.add_argument("--train-samples", type=_count(1), metavar="N",
                    help="the run's training samples: the plan states its time (and cost, with --price)")
    pl.add_argument("--tokens-per-sample", type=_count(1), metavar="T", help="tokens per sample (with --train-samples)")
    pl.add_argument("--price", type=_number("--price"), metavar="USD", help="USD per GPU-hour (with --train-samples)")
    pl.add_argument("--gpus", type=_count(1), metavar="K",
                    help="data-parallel GPUs, each running the plan (with --train-samples; default 1)")
    pl.add_argument("--strategy", choices=("ddp", "fsdp"),
                    help="plan one rank of a data-parallel run: ddp (DistributedDataParallel: the one-process "
                         "model plus its gradient buckets) or fsdp (fully_shard on every planned layer and the root: "
                         "sharded parameters, gradients and optimizer state plus all-gather / reduce-scatter "
                         "buffers); planner/DISTRIBUTED.md; --budget is each rank's")
    pl.add_argument("--world-size", type=_count(1), metavar="N",
                    help="ranks of --strategy (default 1); global-batch=N counts the samples of all ranks")
    pl.add_argument("--fsdp-param-dtype", choices=("fp32", "bf16"),
                    help="with --strategy fsdp: FSDP2's MixedPrecisionPolicy(param_dtype=...) (default fp32: none); "
                         "bf16 all-gathers and computes in bf16 (reduce_dtype None: gradients reduced in bf16), "
                         "sharded parameters and optimizer state stay fp32; verify applies the same policy")
    pl.add_argument("--out", help="write the plan JSON here")
    pl.add_argument("--profile-out", help="also write the measured profile here")
    pl.add_argument("--json", action="store_true", help="print the plan JSON instead of the table")
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    v = sub.add_parser("verify", help="apply a plan and train real steps under memfit with the budget as capacity")
    v.add_argument("--job", required=True)
    v.add_argument("--plan", required=True)
    v.add_argument("--budget", type=_size, help="memfit's capacity for the run (default: the plan's budget; "
                                               "not below it)")
    v.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    v.add_argument("--steps", type=_count(1), default=3)
    v.add_argument("--warmup-steps", type=_count(0), default=1)
    v.add_argument("--nproc", type=_count(1), metavar="N",
                   help="run N real ranks (gloo on CPU; DDP or fully_shard, as the plan says) of a plan made with --strategy; each rank has "
                        "memfit as its CPU allocator with the budget as capacity (default: the plan's world_size)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--snapshot", help="also write the run as a PyTorch memory snapshot (FILE.pickle)")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    d = sub.add_parser("demo", help="profile the built-in GPT, plan it for a budget, apply and verify")
    # A literal default: parsing "160MiB" here would load libmemfit.so for every command, `env` included.
    d.add_argument("--budget", type=_size, default=160 << 20, help="the memory budget (default 160MiB)")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--out-dir", default="demo-output")
    d.add_argument("--precisions", type=_precisions, default=["fp32", "bf16"],
                   help="precisions profiled, each of which the plan may use (default fp32,bf16)")

    ns = sub.add_parser("noise-scale", help="measure the gradient noise scale B_simple (the critical batch) of a job "
                                            "at its current weights")
    ns.add_argument("--job", required=True, help="FILE.py:FUNC or package.module:FUNC returning memfit.Job")
    ns.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ns.add_argument("--batch-sizes", type=_batch_sizes, default=[4, 64], metavar="SMALL,BIG",
                    help="the two batch sizes whose gradient norms are compared (default 4,64)")
    ns.add_argument("--draws", type=_count(2), default=32, help="gradients drawn at each batch size (default 32)")
    ns.add_argument("--seed", type=int, default=0, help="torch's seed before the draws (default 0)")
    ns.add_argument("--out", help="also write the JSON here")
    ns.add_argument("--json", action="store_true", help="print one JSON object")
    ns.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    ch = sub.add_parser("chinchilla", help="compute-optimal parameters and tokens for a training budget "
                                           "(Hoffmann et al. 2022, the Besiroglu et al. 2024 fit)")
    ch.add_argument("--flops", type=_number("--flops", strict=True), help="the training compute C in FLOPs")
    ch.add_argument("--usd", type=_number("--usd", strict=True), help="the budget in USD (with --price, "
                                                                        "--gpu-tflops, --mfu)")
    ch.add_argument("--price", type=_number("--price", strict=True), help="USD per GPU-hour")
    ch.add_argument("--gpu-tflops", type=_number("--gpu-tflops", strict=True), help="a GPU's peak TFLOP/s")
    ch.add_argument("--mfu", type=_number("--mfu", strict=True), help="model FLOPs utilization, in (0, 1]")
    ch.add_argument("--fit", choices=("besiroglu2024", "hoffmann2022"), default="besiroglu2024",
                    help="the L(N, D) fit (default besiroglu2024, the replication's)")
    ch.add_argument("--json", action="store_true", help="print one JSON object")

    e = sub.add_parser("env", help="what memfit does in this process and why (does not import torch)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--import-torch", action="store_true",
                   help="import torch first (which installs memfit when a variable asks for it)")
    rn = sub.add_parser("run", help="run a Python script (or -m module) with memfit loaded before torch: the "
                                    "route to backend:memfit where the autoload .pth file does not run")
    rn.add_argument("-m", dest="module", help="run this module as __main__ instead of a script")
    rn.add_argument("target", nargs=argparse.REMAINDER, help="SCRIPT.py [ARGS...] (or the module's ARGS with -m)")
    return top


def _run(args: argparse.Namespace) -> int:
    """`python3 -m memfit run train.py ...`: memfit is imported here, before the
    script imports torch, so `backend:memfit` in PyTorch's variables is taken out
    before PyTorch (>= 2.10 parses it at `import torch`) can reject it."""
    import runpy

    from . import _autoload

    _autoload.run_safely()
    if args.module:
        sys.argv = [args.module, *args.target]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return 0
    if not args.target:
        raise MemfitError("memfit run: name a script (python3 -m memfit run train.py ARGS) or -m MODULE")
    script = args.target[0]
    if not os.path.isfile(script):
        raise MemfitError(f"memfit run: no such script: {script}")
    sys.argv = list(args.target)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":  # the script's own exceptions and exit codes are its own
        try:
            return _run(args)
        except MemfitError as e:
            print(str(e), file=sys.stderr)
            return 2
    try:
        if args.command == "profile":
            return _profile(args)
        if args.command == "report":
            return _report(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "noise-scale":
            return _noise_scale(args)
        if args.command == "chinchilla":
            return _chinchilla(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "env":
            from .env import run

            return run(as_json=args.json, import_torch=args.import_torch)
    except NothingFitsError as e:
        print(str(e), file=sys.stderr)
        return 3
    except MemfitError as e:
        print(str(e), file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch.OutOfMemoryError under --capacity: the job itself does not fit
        if not is_out_of_memory(e):
            raise
        lines = str(e).splitlines() or [""]
        headline = next((line for line in lines if "tried to allocate" in line), lines[0])
        print(f"memfit: the job does not fit: {headline.strip()}", file=sys.stderr)
        return 3
    return 2


def _writable(path: Optional[str], what: str) -> None:
    """Fail before minutes of profiling, not after, when an output cannot be written."""
    if path is None:
        return
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise MemfitError(f"memfit: {what} {path!r} is a directory")
    if not os.path.isdir(parent):
        raise MemfitError(f"memfit: {what} {path!r}: no directory {parent!r}")
    if not os.access(target if os.path.exists(target) else parent, os.W_OK):
        raise MemfitError(f"memfit: {what} {path!r} cannot be written (permission denied)")


def _progress(args: argparse.Namespace):
    """Progress lines on stderr (what is being measured now), unless -q."""
    if getattr(args, "quiet", False):
        return None
    return lambda message: print(f"memfit: {message}", file=sys.stderr, flush=True)


def _profile(args: argparse.Namespace) -> int:
    from .profiling import profile
    from .reporting import report

    _writable(args.out, "--out")
    _writable(args.snapshot, "--snapshot")
    prof = profile(args.job, device=args.device, batch_sizes=args.batch_sizes, precisions=args.precisions or ["fp32"],
                   steps=args.steps, warmup_steps=args.warmup_steps, capacity=args.capacity,
                   snapshot=args.snapshot, blocks=args.blocks, progress=_progress(args), selective=args.selective,
                   timing_batches=args.timing_batches)
    prof.save(args.out)
    if not args.quiet:
        print(report(prof))
        print(f"\nprofile written to {args.out}")
        if args.snapshot:
            print(f"memory snapshot written to {args.snapshot}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .documents import Profile  # no torch: report works without it
    from .reporting import plot, report

    _writable(args.plot, "--plot")  # a directory would become DIR.png, a missing one a traceback
    if (args.strategy is None) != (args.world_size is None):
        raise MemfitError("memfit report: --strategy and --world-size go together")
    if _is_plan(args.profile):
        from .documents import Plan
        from .reporting import plan_report

        if args.strategy or args.plot or args.batch_size or args.precision:
            raise MemfitError(f"memfit report: {args.profile} is a plan: --strategy, --world-size, --plot, "
                              "--batch-size and --precision are for a profile (a plan has its own)")
        print(plan_report(Plan.load(args.profile).data))
        return 0
    prof = Profile.load(args.profile)
    print(report(prof, args.batch_size, args.precision, args.top))
    if args.strategy:
        from .distributed import per_rank_memory
        from .reporting import per_rank_lines, pick_setting

        s = pick_setting(prof, args.batch_size, args.precision)
        print()
        print("\n".join(per_rank_lines(per_rank_memory(prof.data, args.strategy, args.world_size, s),
                                       s["batch_size"], s["batch_size"] * args.world_size)))
    if args.plot:
        print(f"timeline written to {plot(prof, args.plot, args.batch_size, args.precision)}")
    return 0


def _is_plan(path: str) -> bool:
    """Whether a report's file is a plan (format memfit-plan); anything else is read as a profile."""
    import json

    try:
        with open(path) as f:
            return json.load(f).get("format") == "memfit-plan"
    except (OSError, ValueError, AttributeError):
        return False  # Profile.load says what is wrong with it


def _human(n: int) -> str:
    from .reporting import human

    return human(n)


def _objective(text: str):
    if text in ("max-batch", "throughput"):
        return text, None
    if text.startswith("global-batch="):
        try:
            n = int(text.split("=", 1)[1])
        except ValueError:
            n = 0
        if n >= 1:
            return "global-batch", n
    raise MemfitError(f"memfit plan: --objective {text!r}: expected max-batch, throughput or global-batch=N")


def _plan(args: argparse.Namespace) -> int:
    from .compute import add_cost, add_loader_check, add_noise_scale, add_plan_at_critical, load_noise_scale
    from .documents import Profile, plan  # no torch: plan --profile works without it

    objective, global_batch = _objective(args.objective)
    if not args.profile and not args.job:
        raise MemfitError("memfit plan: give --job (to profile it) or --profile (a profile already measured)")
    noise = load_noise_scale(args.noise_scale) if args.noise_scale is not None else None
    if args.train_samples is None:
        for flag, value in (("--price", args.price), ("--gpus", args.gpus),
                            ("--tokens-per-sample", args.tokens_per_sample)):
            if value is not None:
                raise MemfitError(f"memfit plan: {flag} needs --train-samples (the run's samples)")
    _writable(args.out, "--out")
    _writable(args.profile_out, "--profile-out")
    if args.profile:
        prof = Profile.load(args.profile)
    else:
        from .profiling import profile

        prof = profile(args.job, device=args.device, batch_sizes=args.batch_sizes, precisions=args.precisions or ["fp32"],
                       steps=args.steps, warmup_steps=args.warmup_steps, capacity=args.capacity,
                       blocks=args.blocks, progress=_progress(args), selective=args.selective,
                       timing_batches=args.timing_batches)
        if args.profile_out:
            prof.save(args.profile_out)
    say = _progress(args)
    if say:
        say(f"planning {len(prof.settings[0]['layers'])} layers for a budget of {_human(args.budget)}")
    if args.world_size is not None and not args.strategy:
        raise MemfitError("memfit plan: --world-size needs --strategy (ddp or fsdp)")
    if args.fsdp_param_dtype is not None and args.strategy != "fsdp":
        raise MemfitError("memfit plan: --fsdp-param-dtype needs --strategy fsdp")
    if args.strategy:
        from .distributed import plan_distributed

        if noise is not None:
            raise MemfitError("memfit plan: --noise-scale is not combined with --strategy yet")
        result = plan_distributed(prof, budget=args.budget, strategy=args.strategy, world_size=args.world_size or 1,
                                  objective=objective, global_batch=global_batch, fsdp_param_dtype=args.fsdp_param_dtype,
                                  precisions=args.plan_precisions or (args.precisions if args.profile else None),
                                  max_batch=args.max_batch, headroom=args.headroom)
    else:
        result = plan(prof, budget=args.budget, objective=objective, global_batch=global_batch,
                      precisions=args.plan_precisions or (args.precisions if args.profile else None),
                      max_batch=args.max_batch, headroom=args.headroom, selective=args.selective)
    if noise is not None:
        ns = add_noise_scale(result.data, noise)
        if ns["suggested_global_batch"]:  # offer the plan at the critical batch beside the largest one
            try:
                at_critical = plan(prof, budget=args.budget, objective="global-batch",
                                   global_batch=ns["suggested_global_batch"],
                                   precisions=args.plan_precisions or (args.precisions if args.profile else None),
                                   max_batch=args.max_batch, headroom=args.headroom, selective=args.selective)
                add_plan_at_critical(result.data, at_critical.data)
            except MemfitError as e:  # e.g. a critical batch below what any plan can run
                ns["plan_at_critical_batch"] = {"note": str(e)}
    if args.train_samples is not None:
        add_cost(result.data, args.train_samples, price=args.price,
                 gpus=args.gpus or result.data.get("world_size", 1),
                 tokens_per_sample=args.tokens_per_sample)
    add_loader_check(result.data, prof.data)  # a profile with "loader" (Job(loader=...)): would the step wait?
    if args.out:
        result.save(args.out)
    if args.json:
        print(json.dumps(result.data, indent=1))
    else:
        print(result.table())
        if args.strategy:
            d = result.data
            print(f"  {d['strategy']}: {d['world_size']} ranks x batch {d['per_rank_batch']}"
                  + (f" x {d['grad_accumulation_steps']} accumulation steps" if d.get("grad_accumulation_steps", 1) > 1
                     else "") + f" = global batch {d['global_batch']}; " +
                  (f"each rank holds {_human(d['ddp']['added_bytes'])} of gradient buckets "
                   f"({len(d['ddp']['buckets'])} buckets) in its predicted peak" if d["strategy"] == "ddp" else
                   f"sharding frees {_human(d['fsdp']['freed_bytes'])} of parameters, gradients and optimizer "
                   f"state per rank ({len(d['fsdp']['units'])} fully_shard units); all-gather and reduce-scatter "
                   "buffers are in its predicted peak"
                   + (f"; param_dtype {d['fsdp']['mixed_precision']['param_dtype']} (MixedPrecisionPolicy)"
                      if d["strategy"] == "fsdp" and d["fsdp"].get("mixed_precision") else "")))
        if args.out:
            print(f"plan written to {args.out}")
    return 0


def _noise_scale(args: argparse.Namespace) -> int:
    from .noise_scale import measure, table

    _writable(args.out, "--out")
    if len(args.batch_sizes) != 2 or args.batch_sizes[0] >= args.batch_sizes[1]:
        raise MemfitError(f"memfit noise-scale: --batch-sizes {','.join(map(str, args.batch_sizes))}: "
                          "expected two sizes SMALL,BIG with SMALL < BIG")
    result = measure(args.job, device=args.device, batch_sizes=args.batch_sizes, draws=args.draws, seed=args.seed,
                     progress=_progress(args))
    result["job"] = args.job
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


def _chinchilla(args: argparse.Namespace) -> int:
    from .chinchilla import flops_from_budget, optimal, table

    money = {"--usd": args.usd, "--price": args.price, "--gpu-tflops": args.gpu_tflops, "--mfu": args.mfu}
    budget = None
    if args.flops is not None:
        given = [k for k, v in money.items() if v is not None]
        if given:
            raise MemfitError(f"memfit chinchilla: give --flops or --usd with --price, --gpu-tflops and --mfu, "
                              f"not both (--flops and {given[0]})")
        flops = args.flops
    else:
        missing = [k for k, v in money.items() if v is None]
        if len(missing) == len(money):
            raise MemfitError("memfit chinchilla: give --flops C, or --usd X --price P --gpu-tflops T --mfu U")
        if missing:
            raise MemfitError(f"memfit chinchilla: --usd needs --price, --gpu-tflops and --mfu (missing {missing[0]})")
        flops = flops_from_budget(args.usd, args.price, args.gpu_tflops, args.mfu)
        budget = {"usd": args.usd, "price": args.price, "gpu_hours": args.usd / args.price,
                  "gpu_tflops": args.gpu_tflops, "mfu": args.mfu}
    result = optimal(flops, fit=args.fit)
    if budget:
        result["budget"] = budget
    print(json.dumps(result, indent=1) if args.json else table(result, budget))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .planning import Plan, verify

    from .reporting import human

    _writable(args.snapshot, "--snapshot")
    the_plan = Plan.load(args.plan)
    planned = the_plan.data.get("budget_bytes")
    if args.budget is None:
        if not isinstance(planned, int) or planned <= 0:
            raise MemfitError(f"memfit verify: {args.plan} names no budget_bytes: give --budget")
        args.budget = planned
    elif isinstance(planned, int) and args.budget < planned:
        raise MemfitError(f"memfit verify: --budget {human(args.budget)} is below the plan's {human(planned)}: "
                          "the plan is made for its budget (plan again for this one)")
    if args.nproc is not None or the_plan.data.get("strategy"):
        return _verify_distributed(args)
    result = verify(args.job, the_plan, args.budget, device=args.device, steps=args.steps,
                    warmup_steps=args.warmup_steps, snapshot=args.snapshot, progress=_progress(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"memfit verify: batch {result['batch_size']} on {args.device} with capacity {human(args.budget)}")
        def error(key: str) -> str:  # only a run that fits has a peak to compare
            return f"{result[key]:+.2f}%" if result.get(key) is not None else "not compared: the run ran out of memory"

        print(f"  predicted peak {human(result['predicted_peak_bytes'])}, measured peak "
              f"{human(result['measured_peak_bytes'])} ({error('error_percent')})")
        if result.get("predicted_reserved_bytes"):
            print(f"  predicted reserved {human(result['predicted_reserved_bytes'])}, measured peak reserved "
                  f"{human(result['measured_peak_reserved_bytes'])} ({error('reserved_error_percent')})")
        else:
            print(f"  measured peak reserved {human(result['measured_peak_reserved_bytes'])}")
        print("  OOM: " + (f"yes ({result['error']})" if result["oom"] else "no"))
    return 1 if result["oom"] else 0


def _verify_distributed(args: argparse.Namespace) -> int:
    from .distributed import verify_distributed
    from .reporting import human

    if args.device != "cpu":
        raise MemfitError("memfit verify --nproc: ranks run on CPU (gloo) only")
    if args.snapshot:
        raise MemfitError("memfit verify --nproc: --snapshot is for one process")
    result = verify_distributed(args.job, args.plan, args.budget, nproc=args.nproc, steps=args.steps,
                                warmup_steps=max(args.warmup_steps, 2), progress=_progress(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"memfit verify: {result['world_size']} ranks ({result['strategy']}), batch {result['per_rank_batch']} "
              f"per rank, capacity {human(result['budget_bytes'])} each; predicted peak "
              f"{human(result['predicted_peak_bytes'])} per rank")
        for r in result["ranks"]:
            what = (f"OOM ({r['error']})" if r["oom"] else f"error: {r['error']}" if r["error"] else
                    f"measured peak {human(r['measured_peak_bytes'])} ({r['error_percent']:+.2f}%)")
            print(f"  rank {r['rank']}: {what}")
    return 1 if result["oom"] or any(r["error"] for r in result["ranks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
