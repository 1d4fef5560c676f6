#!/usr/bin/env python3
"""Gather the runs of benchmarks/run_benchmarks.sh into one JSON file and a
Markdown table. Every number printed is copied from memfit-replay's JSON, or
is a ratio of two of them; nothing is measured here.

    render_results.py RAW_DIR --json OUT.json --markdown OUT.md
    render_results.py OLD.json --json OUT.json --markdown OUT.md   # re-render
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

AIM_NS_PER_PAIR = 100.0
AIM_FRAGMENTATION = 1.02  # peak reserved / peak allocated, page-mapped pools, every trace


def vmm_of(run: dict[str, Any]) -> str:
    """'on' (page-mapped pools) or 'off' (segments), from what the allocator reported."""
    return "on" if run.get("granule_bytes") else "off"


def load(raw: Path) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    machine: dict[str, str] = {}
    for line in (raw / "machine.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        machine[key] = value
    runs = []
    for path in sorted(raw.glob("run-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        run = json.loads(path.read_text())
        run["command"] = path.with_suffix(".cmd").read_text().strip()
        runs.append(run)
    callgrind = []
    if (raw / "callgrind.txt").exists():
        for line in (raw / "callgrind.txt").read_text().splitlines():
            trace, what, ir, passes = line.split()
            callgrind.append({"trace": trace, "allocator": what, "instructions": int(ir),
                              "passes": int(passes)})
    return machine, runs, callgrind


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def aims(runs: list[dict[str, Any]]) -> list[str]:
    """One line per aim, met or not, from the runs' own figures."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    on = [r for r in runs if vmm_of(r) == "on"]
    pairs = [r["ns_per_pair"] for r in on]
    vs_malloc = [r["speed_ratio"] for r in on if r.get("baseline") == "malloc"]
    frag = [r["fragmentation"] for r in on if r["fragmentation"] is not None]
    warm = [r["warm_fragmentation"] for r in on if r["warm_fragmentation"] is not None]
    vs_native = [r["reserved_vs_native"] for r in on if r.get("reserved_vs_native") is not None]
    lines = [
        f"1. steady-state alloc+free pair < {AIM_NS_PER_PAIR:.0f} ns (vmm on): "
        f"{verdict(max(pairs) < AIM_NS_PER_PAIR)} ({min(pairs):.0f} to {max(pairs):.0f} ns per pair)",
    ]
    if vs_malloc:
        lines.append(f"2. at least as fast as glibc malloc (speed ratio <= 1, vmm on): "
                     f"{verdict(max(vs_malloc) <= 1.0)} (ratios {min(vs_malloc):.3f} to {max(vs_malloc):.3f})")
    if frag:
        lines.append(f"3. peak reserved / peak allocated <= {AIM_FRAGMENTATION} on every trace (vmm on, first "
                     f"pass): {verdict(max(frag) <= AIM_FRAGMENTATION)} ({min(frag):.4f} to {max(frag):.4f}; "
                     f"after the warm passes {min(warm):.4f} to {max(warm):.4f})")
    if vs_native:
        lines.append(f"4. peak reserved never above PyTorch's native policy emulated on the same trace: "
                     f"{verdict(max(vs_native) <= 1.0)} (memfit / native {min(vs_native):.3f} to "
                     f"{max(vs_native):.3f})")
    return lines


def render(machine: dict[str, str], runs: list[dict[str, Any]],
           callgrind: list[dict[str, Any]]) -> str:
    out = [f"# memfit-replay benchmark, {machine['date']}", ""]
    out += [
        "Produced by `benchmarks/run_benchmarks.sh` (see benchmarks/README.md for what is",
        "compared). Every figure below is copied from memfit-replay's JSON output, kept",
        f"beside this file as `replay-{machine['date']}.json`.",
        "",
        "## Machine and build",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores (a KVM guest: timings are noisy)",
        f"- kernel {machine['kernel']}; {machine['glibc']}; jemalloc: {machine['jemalloc']}",
        f"- memfit: {machine.get('memfit_commit', 'unknown')}",
        f"- compiler: {machine['compiler']}; CMAKE_BUILD_TYPE={machine['build_type']}",
        f"- load average before / after: {machine['load_before']} / {machine['load_after']}",
        f"- {machine['repeat']} timed passes of each kind per run; times are medians",
        "",
        "## The aims (benchmarks/README.md)",
        "",
        *aims(runs),
        "",
        "## Memory (virtual backend, first pass on a fresh allocator)",
        "",
        "vmm on: page-mapped pools (2 MiB granules, as on a GPU); off: segments. native: PyTorch's",
        "CUDACachingAllocator policy emulated on the same trace (`--compare native`), with and",
        "without `expandable_segments`. Warm: after the warm passes on one allocator.",
        "",
        "| trace | vmm | peak allocated MiB | peak reserved MiB "
        f"| reserved / allocated (aim <= {AIM_FRAGMENTATION}) | warm | native reserved MiB | native ratio "
        "| expandable reserved MiB | expandable ratio | memfit / native | granules mapped (moved, new) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    seen = set()
    for r in runs:
        key = (r["trace"], vmm_of(r))
        if key in seen:
            continue  # the memory figures are the same in every run of a trace and policy
        seen.add(key)
        frag = r["fragmentation"]
        mark = "" if frag is None or frag <= AIM_FRAGMENTATION or vmm_of(r) == "off" else " (misses)"
        granules = (f"{r['granule_maps']:,} ({r['granule_unmaps']:,}, {r['granule_creates']:,})"
                    if vmm_of(r) == "on" else f"{r['segment_maps']} segment maps")
        out.append(
            f"| {Path(r['trace']).name} | {vmm_of(r)} | {mib(r['peak_allocated_bytes'])} "
            f"| {mib(r['peak_reserved_bytes'])} | {frag:.4f}{mark} | {r['warm_fragmentation']:.4f} "
            f"| {mib(r['native_peak_reserved_bytes'])} | {r['native_fragmentation']:.4f} "
            f"| {mib(r['native_expandable_peak_reserved_bytes'])} | {r['native_expandable_fragmentation']:.4f} "
            f"| {r['reserved_vs_native']:.3f} | {granules} |")
    out += [
        "",
        "## Speed (steady state: warm allocator, same trace, side by side)",
        "",
        "ns/event is the median over the timed passes of (pass time / events); a pair is",
        "one alloc plus one free (2 x ns/event). speed ratio = memfit median / baseline",
        "median; paired = median of the pass-by-pass ratios. Below 1: memfit is faster.",
        "",
        f"| trace | vmm | baseline | memfit ns/event | memfit ns/pair (aim < {AIM_NS_PER_PAIR:.0f}) "
        "| memfit first pass ns/event | baseline ns/event | speed ratio | paired ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        out.append(
            f"| {Path(r['trace']).name} | {vmm_of(r)} | {r['baseline']} | {r['ns_per_op']:.1f} "
            f"| {r['ns_per_pair']:.1f} | {r['ns_per_op_first_pass']:.1f} "
            f"| {r['baseline_ns_per_op']:.1f} | {r['speed_ratio']:.3f} | {r['speed_ratio_paired']:.3f} |")
    if callgrind:
        events = {r["trace"]: r["events"] for r in runs}
        out += [
            "",
            "## Instructions per event (callgrind)",
            "",
            "User-space instructions counted by `valgrind --tool=callgrind --toggle-collect`",
            "inside the replay loop, divided by passes x events: immune to the machine's noise,",
            "but blind to the kernel (glibc's mmap/munmap of large blocks, page faults).",
            "memfit: one first pass + two warm passes; baselines: two passes.",
            "",
            "| trace | memfit (vmm on) | memfit (segments) | glibc malloc | jemalloc |",
            "|---|---:|---:|---:|---:|",
        ]
        per: dict[str, dict[str, float]] = {}
        for c in callgrind:
            n = events.get(c["trace"], 0) * c["passes"]
            per.setdefault(c["trace"], {})[c["allocator"]] = c["instructions"] / n if n else 0.0
        for trace, v in per.items():
            out.append(f"| {Path(trace).name} | {v.get('memfit', 0):.0f} | {v.get('memfit-segments', 0):.0f} "
                       f"| {v.get('malloc', 0):.0f} | {v.get('jemalloc', 0):.0f} |")
        out += ["", f"({machine.get('valgrind', 'valgrind')}; command, for each trace and allocator:",
                "`valgrind --tool=callgrind --toggle-collect=replay_memfit|replay_baseline "
                "memfit-replay TRACE --repeat 1 [--conf vmm:on|off | --baseline A]`)"]
    out += ["", "## Commands", "", "Run from the repository root, with the Release build's binary:", ""]
    out += [f"    {r['command']}" for r in runs]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    args = parser.parse_args()
    if args.raw.is_file():  # re-render a results JSON written before
        doc = json.loads(args.raw.read_text())
        machine, runs, callgrind = doc["machine"], doc["runs"], doc.get("callgrind", [])
    else:
        machine, runs, callgrind = load(args.raw)
    args.json.write_text(json.dumps({"machine": machine, "runs": runs, "callgrind": callgrind},
                                    indent=2) + "\n")
    args.markdown.write_text(render(machine, runs, callgrind))


if __name__ == "__main__":
    main()
