#!/usr/bin/env python3
"""Run memfit-plan once and check what it did, for ctest.

    check_plan.py [checks...] -- COMMAND [ARGS...]

--derive SRC DST (with --delete PATH / --set PATH=JSON) first writes DST, a copy
of the profile SRC with fields removed or replaced (PATH like
settings[1].layers[2].forward.peak), so that bad profiles need no fixture files.
Exits 0 when every check holds, 1 with the reasons when one does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli_check  # noqa: E402  (tests/cli_check.py)


def parse_args() -> Tuple[argparse.Namespace, List[str]]:
    parser = cli_check.command_parser("check_plan.py")
    parser.add_argument("--json", action="store_true", help="stdout is exactly one plan JSON object")
    parser.add_argument("--file", help="a plan JSON file the command must write")
    parser.add_argument("--field", action="append", default=[], metavar="PATH=VALUE",
                        help="a field of the plan must equal VALUE (compared as JSON)")
    parser.add_argument("--derive", nargs=2, metavar=("SRC", "DST"), help="write a changed copy of a profile")
    parser.add_argument("--delete", action="append", default=[], metavar="PATH")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=JSON")
    return cli_check.parse(parser)


def split_path(path: str) -> List[Any]:
    parts: List[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    return parts


def lookup(doc: Any, path: str) -> Any:
    for part in split_path(path):
        doc = doc[part]
    return doc


def derive(args: argparse.Namespace) -> None:
    src, dst = args.derive
    with open(src) as f:
        doc = json.load(f)
    for path in args.delete:
        *parent, last = split_path(path)
        node = doc
        for part in parent:
            node = node[part]
        del node[last]
    for item in args.set:
        path, _, value = item.partition("=")
        *parent, last = split_path(path)
        node = doc
        for part in parent:
            node = node[part]
        node[last] = json.loads(value)
    with open(dst, "w") as f:
        json.dump(doc, f)


def check_plan(doc: Any, problems: List[str]) -> None:
    """What every plan must satisfy (planner/PLAN.md, "The plan")."""
    if not isinstance(doc, dict):
        problems.append("the plan is not a JSON object")
        return
    for key in ("format", "version", "batch_size", "budget_bytes", "usable_bytes", "headroom", "objective",
                "predicted_peak_bytes", "predicted_breakdown", "predicted_step_seconds",
                "predicted_recompute_seconds", "recompute_overhead_percent", "throughput_samples_per_second",
                "model_error", "self_check", "grad_accumulation_steps", "global_batch", "lr_scale", "exact",
                "baselines", "planning_seconds", "layers"):
        if key not in doc:
            problems.append(f"the plan has no {key!r}")
    if problems:
        return
    if doc["format"] != "memfit-plan" or doc["version"] != 1:
        problems.append(f"format/version {doc['format']!r} {doc['version']!r}")
    if not doc["predicted_peak_bytes"] <= doc["usable_bytes"] <= doc["budget_bytes"]:
        problems.append("expected predicted peak <= usable <= budget")
    b = doc["predicted_breakdown"]
    if b["fixed_bytes"] + b["kept_bytes"] + b["transient_bytes"] != doc["predicted_peak_bytes"]:
        problems.append(f"the breakdown {b} does not add up to the peak {doc['predicted_peak_bytes']}")
    if doc["batch_size"] * doc["grad_accumulation_steps"] != doc["global_batch"]:
        problems.append("batch_size * grad_accumulation_steps != global_batch")
    recompute = sum(layer["recompute_seconds"] for layer in doc["layers"])
    if abs(recompute - doc["predicted_recompute_seconds"]) > 1e-9 * max(1.0, recompute):
        problems.append(f"the layers' recompute seconds {recompute} != {doc['predicted_recompute_seconds']}")
    for layer in doc["layers"]:
        if not layer["checkpoint"] and layer["recompute_seconds"] != 0:
            problems.append(f"layer {layer['name']}: recompute without checkpoint")
    errors = [c["error"] for c in doc["self_check"]]
    if not errors or abs(max(errors) - doc["model_error"]) > 1e-12:
        problems.append("model_error is not the largest self-check error")


def main() -> int:
    args, command = parse_args()
    if args.derive:
        derive(args)
    if args.file and os.path.exists(args.file):
        os.remove(args.file)
    problems: List[str] = []
    status, out, err = cli_check.run(args, command)
    cli_check.match_output(args, status, out, err, problems)

    docs = []
    if args.json:
        try:
            docs.append(json.loads(out))
        except ValueError as e:
            problems.append(f"stdout is not one JSON object: {e}")
    if args.file:
        try:
            with open(args.file) as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            problems.append(f"{args.file}: not written or not JSON: {e}")
    for doc in docs:
        check_plan(doc, problems)
        for item in args.field:
            path, _, value = item.partition("=")
            try:
                got = lookup(doc, path)
            except (KeyError, IndexError, TypeError):
                problems.append(f"the plan has no {path}")
                continue
            if got != json.loads(value):
                problems.append(f"{path} is {got!r}, expected {value}")
    if len(docs) == 2 and {k: v for k, v in docs[0].items() if k != "planning_seconds"} != \
            {k: v for k, v in docs[1].items() if k != "planning_seconds"}:
        problems.append("the plan on stdout and the one written to the file differ")

    return cli_check.report(command, problems, out, err)


if __name__ == "__main__":
    sys.exit(main())
