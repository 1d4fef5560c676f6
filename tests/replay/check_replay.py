#!/usr/bin/env python3
"""Run memfit-replay once and check what it did, for ctest.

    check_replay.py [checks...] -- COMMAND [ARGS...]

Exits 0 when every check holds, 1 with the reasons when one does not, and 77
(ctest's SKIP_RETURN_CODE in tests.cmake) when --skip-if-stderr matches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli_check  # noqa: E402  (tests/cli_check.py)

SKIP = 77


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = cli_check.command_parser("check_replay.py")
    parser.add_argument("--json", action="store_true", help="stdout is exactly one JSON object")
    parser.add_argument("--invariants", action="store_true",
                        help="peak reserved >= allocated >= requested, and sane figures")
    parser.add_argument("--field", action="append", default=[], metavar="KEY=VALUE",
                        help="a JSON field must equal VALUE (compared as JSON)")
    parser.add_argument("--has", action="append", default=[], metavar="KEY",
                        help="a JSON field that must be present")
    parser.add_argument("--lacks", action="append", default=[], metavar="KEY",
                        help="a JSON field that must be absent")
    parser.add_argument("--native", action="store_true",
                        help="the --compare native figures are there and agree with each other")
    parser.add_argument("--ldd-lacks", help="the command's executable must not load this library")
    parser.add_argument("--skip-if-stderr", help="regex: skip the test (exit 77) if stderr matches")
    return cli_check.parse(parser)


def check_invariants(doc: dict[str, Any], problems: list[str]) -> None:
    req, alloc, res = (doc.get(k) for k in
                       ("peak_requested_bytes", "peak_allocated_bytes", "peak_reserved_bytes"))
    if not all(isinstance(v, int) for v in (req, alloc, res)):
        problems.append(f"peaks are not integers: {req!r} {alloc!r} {res!r}")
        return
    if not res >= alloc >= req:
        problems.append(f"expected reserved {res} >= allocated {alloc} >= requested {req}")
    # One device: memfit's peak must be the replayer's exactly. Several: memfit's
    # is a sum of per-device peaks, at least the peak of the sum.
    stats_req = doc.get("stats_peak_requested_bytes")
    exact = doc.get("devices", 1) == 1
    if not isinstance(stats_req, int) or (stats_req != req if exact else stats_req < req):
        problems.append(f"memfit's requested peak {stats_req!r} does not agree with the "
                        f"replayer's {req} ({doc.get('devices', 1)} devices)")
    if alloc > 0:
        frag = doc.get("fragmentation")
        if not isinstance(frag, (int, float)) or abs(frag - res / alloc) > 1e-4:
            problems.append(f"fragmentation {frag!r} is not reserved/allocated = {res / alloc}")
    for key in ("events", "ns_per_op", "cache_hits", "cache_misses", "ooms"):
        if not isinstance(doc.get(key), (int, float)) or doc[key] < 0:
            problems.append(f"{key} missing or negative: {doc.get(key)!r}")
    if doc.get("events", 0) > 0 and not doc.get("ns_per_op", 0) > 0:
        problems.append("ns_per_op is not positive")
    if doc.get("ooms") != 0:
        problems.append(f"ooms is {doc.get('ooms')!r} in a run that succeeded")


# Each emulation's JSON prefix, and the field holding memfit's reserved / its reserved.
NATIVE_RATIOS = {"native": "reserved_vs_native", "native_expandable": "reserved_vs_native_expandable"}


def check_native(doc: dict[str, Any], problems: list[str]) -> None:
    """Both emulations: integer peaks, reserved >= allocated (>= requested when
    the emulation ran to the end), the ratios recomputed from the peaks."""
    req = doc.get("peak_requested_bytes")
    for prefix in NATIVE_RATIOS:
        res, alloc, ooms = (doc.get(f"{prefix}_{k}") for k in
                            ("peak_reserved_bytes", "peak_allocated_bytes", "ooms"))
        if not all(isinstance(v, int) for v in (res, alloc, ooms)):
            problems.append(f"{prefix} figures are not integers: {res!r} {alloc!r} {ooms!r}")
            continue
        if ooms not in (0, 1) or (ooms == 1) != isinstance(doc.get(f"{prefix}_oom_line"), int):
            problems.append(f"{prefix}_ooms {ooms!r} disagrees with {prefix}_oom_line "
                            f"{doc.get(prefix + '_oom_line')!r}")
        if res < alloc or (ooms == 0 and isinstance(req, int) and alloc < req):
            problems.append(f"expected {prefix} reserved {res} >= allocated {alloc}"
                            + (f" >= requested {req}" if ooms == 0 else ""))
        frag = doc.get(f"{prefix}_fragmentation")
        if alloc > 0 and (not isinstance(frag, (int, float)) or abs(frag - res / alloc) > 1e-4):
            problems.append(f"{prefix}_fragmentation {frag!r} is not reserved/allocated = {res / alloc}")
        ratio = doc.get(NATIVE_RATIOS[prefix])
        memfit = doc.get("peak_reserved_bytes")
        if res > 0 and isinstance(memfit, int) and (
                not isinstance(ratio, (int, float)) or abs(ratio - memfit / res) > 1e-4):
            problems.append(f"the reserved_vs ratio for {prefix} is {ratio!r}, not {memfit / res}")


def main() -> int:
    args, command = parse_args()
    problems: list[str] = []
    status, out, err = cli_check.run(args, command)
    if args.skip_if_stderr and re.search(args.skip_if_stderr, err, re.M):
        print(f"skipped: {err.strip()}")
        return SKIP
    cli_check.match_output(args, status, out, err, problems)

    if args.json or args.invariants or args.native or args.field or args.has or args.lacks:
        try:
            doc = json.loads(out)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            problems.append(f"stdout is not one JSON object: {e}")
            doc = {}
        if args.invariants and doc:
            check_invariants(doc, problems)
        if args.native and doc:
            check_native(doc, problems)
        for key in args.has:
            if key not in doc:
                problems.append(f"JSON has no {key!r}")
        for key in args.lacks:
            if key in doc:
                problems.append(f"JSON has {key!r}, which it should not")
        for item in args.field:
            key, _, value = item.partition("=")
            if doc.get(key) != json.loads(value):
                problems.append(f"JSON {key} is {doc.get(key)!r}, expected {value}")

    if args.ldd_lacks:
        ldd = subprocess.run(["ldd", command[0]], capture_output=True, text=True)
        if args.ldd_lacks in ldd.stdout:
            problems.append(f"{command[0]} loads {args.ldd_lacks}:\n{ldd.stdout}")

    return cli_check.report(command, problems, out, err)


if __name__ == "__main__":
    sys.exit(main())
