"""The command line: `python3 -m memfit profile|report|plan|verify ...`.
Bad input exits 2 with one line naming what was wrong; nothing fits exits 3."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from ._lib import MemfitError, parse_size


def _batch_sizes(text: str) -> List[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r}: expected integers such as 4,8") from None
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"--batch-sizes {text!r}: expected positive integers such as 4,8")
    return sizes


def _precisions(text: str) -> List[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for p in items:
        if p not in ("fp32", "bf16", "fp16"):
            raise argparse.ArgumentTypeError(f"--precisions: unknown precision {p!r} (fp32, bf16, fp16)")
    return items


def _size(text: str) -> int:
    try:
        return parse_size(text, "size")
    except MemfitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_profile_args(p: argparse.ArgumentParser, default_sizes: str) -> None:
    p.add_argument("--job", required=True, help="FILE.py:FUNC or package.module:FUNC returning memfit.Job")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=_batch_sizes(default_sizes),
                   help=f"batch sizes to measure (default {default_sizes})")
    p.add_argument("--precisions", type=_precisions, default=["fp32"], help="fp32,bf16,fp16 (default fp32)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per setting (default 3)")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--capacity", type=_size, help="memfit's capacity while profiling (e.g. 8GiB)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python3 -m memfit", description="memfit: GPU memory for PyTorch training")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure a job and write its profile (JSON)")
    _add_profile_args(p, "2,4")
    p.add_argument("--out", required=True, help="where to write the profile JSON")
    p.add_argument("--quiet", action="store_true", help="do not print the report")

    r = sub.add_parser("report", help="print a profile's breakdown; --plot writes the PNG timeline")
    r.add_argument("profile")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    r.add_argument("--top", type=int, default=10)
    r.add_argument("--plot", help="write the step's timeline to this PNG")
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "profile":
            return _profile(args)
        if args.command == "report":
            return _report(args)
    except MemfitError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 2


def _profile(args: argparse.Namespace) -> int:
    from .profiling import profile
    from .reporting import report

    prof = profile(args.job, device=args.device, batch_sizes=args.batch_sizes, precisions=args.precisions,
                   steps=args.steps, warmup_steps=args.warmup_steps, capacity=args.capacity)
    prof.save(args.out)
    if not args.quiet:
        print(report(prof))
        print(f"\nprofile written to {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .profiling import Profile
    from .reporting import plot, report

    prof = Profile.load(args.profile)
    print(report(prof, args.batch_size, args.precision, args.top))
    if args.plot:
        print(f"timeline written to {plot(prof, args.plot, args.batch_size, args.precision)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
