"""The part every command-line check script shares (tests/replay/check_replay.py,
tests/planner/check_plan.py): `[checks...] -- COMMAND [ARGS...]` parsing, running
the command once, matching its exit status and output, and the final report."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from typing import List, Tuple


def command_parser(prog: str) -> argparse.ArgumentParser:
    """A parser with the checks every script has; each script adds its own."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--exit", type=int, default=0, help="expected exit status")
    parser.add_argument("--stdout", action="append", default=[], help="regex stdout must match")
    parser.add_argument("--stderr", action="append", default=[], help="regex stderr must match")
    parser.add_argument("--stdin", help="file to feed on standard input")
    parser.add_argument("--timeout", type=float, default=120)
    return parser


def parse(parser: argparse.ArgumentParser) -> Tuple[argparse.Namespace, List[str]]:
    """The checks before '--' and the command after it."""
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(f"{parser.prog}: missing '--' before the command")
    cut = argv.index("--")
    return parser.parse_args(argv[:cut]), argv[cut + 1:]


def run(args: argparse.Namespace, command: List[str]) -> Tuple[int, str, str]:
    stdin = open(args.stdin, "rb") if args.stdin else subprocess.DEVNULL
    try:
        done = subprocess.run(command, stdin=stdin, capture_output=True, timeout=args.timeout)
    finally:
        if args.stdin:
            stdin.close()
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def match_output(args: argparse.Namespace, status: int, out: str, err: str, problems: List[str]) -> None:
    if status != args.exit:
        problems.append(f"exit status {status}, expected {args.exit}")
    for pattern in args.stdout:
        if not re.search(pattern, out, re.M):
            problems.append(f"stdout does not match {pattern!r}")
    for pattern in args.stderr:
        if not re.search(pattern, err, re.M):
            problems.append(f"stderr does not match {pattern!r}")


def report(command: List[str], problems: List[str], out: str, err: str) -> int:
    """Print the verdict; the exit status for ctest."""
    if problems:
        print("command:", " ".join(command))
        print("problems:\n  " + "\n  ".join(problems))
        print(f"--- stdout ---\n{out}--- stderr ---\n{err}")
        return 1
    print("ok")
    return 0
