#!/usr/bin/env bash
# run_benchmarks.sh — build memfit-replay in Release and replay every bundled
# trace through memfit (virtual backend; page-mapped pools and segments) side by
# side with glibc malloc and with jemalloc, PyTorch's policy emulated beside it; writes benchmarks/results/replay-DATE.json (every run's JSON
# and the machine) and replay-DATE.md (the table). Numbers come only from here.
#
#   benchmarks/run_benchmarks.sh                 # REPEAT=11, DATE=today
#   REPEAT=21 DATE=2026-11-22 BUILD_DIR=/tmp/b benchmarks/run_benchmarks.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-replay}
date=${DATE:-$(date +%F)}
repeat=${REPEAT:-11}
results=$root/benchmarks/results
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j2 --target memfit-replay >/dev/null
replay=$build/benchmarks/memfit-replay

# The machine and the build, for the record.
{
  echo "date=$date"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "glibc=$(ldd --version | head -1)"
  echo "compiler=$(grep -m1 '^CMAKE_C_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2) ($("$(grep -m1 '^CMAKE_C_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)" --version | head -1))"
  echo "build_type=$(grep -m1 '^CMAKE_BUILD_TYPE:' "$build/CMakeCache.txt" | cut -d= -f2)"
  echo "jemalloc=$(dpkg-query -W -f '${Package} ${Version}' libjemalloc2 2>/dev/null || echo unknown)"
  commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$root" status --porcelain -- allocator 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes in allocator/"
  fi
  echo "memfit_commit=$commit"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "repeat=$repeat"
} >"$raw/machine.txt"

# Each trace with page-mapped pools (vmm:on, the default) and with segments
# (vmm:off), against both baselines, and PyTorch's policy emulated beside it.
n=0
for trace in "$root"/benchmarks/traces/*.mftrace; do
  for vmm in on off; do
    for baseline in malloc jemalloc; do
      rel=${trace#"$root"/}
      cmd="memfit-replay $rel --backend virtual --conf vmm:$vmm --baseline $baseline --compare native --repeat $repeat --json"
      echo "$cmd" >&2
      (cd "$root" && "$replay" "$rel" --backend virtual --conf "vmm:$vmm" --baseline "$baseline" --compare native \
        --repeat "$repeat" --json) >"$raw/run-$n.json"
      echo "$cmd" >"$raw/run-$n.cmd"
      n=$((n + 1))
    done
  done
done
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw/machine.txt"

# Instructions per event (user space only), which no other process can
# disturb: callgrind counts inside replay_memfit (--repeat 1: one first pass,
# the warm-up pass and one warm pass) or replay_baseline (warm-up and one
# pass). CALLGRIND=0 skips this. Under valgrind the jemalloc restart cannot
# work, so the static TLS tunable is set here (see README.md).
if [ "${CALLGRIND:-1}" = 1 ] && command -v valgrind >/dev/null; then
  for trace in "$root"/benchmarks/traces/*.mftrace; do
    rel=${trace#"$root"/}
    for what in memfit memfit-segments malloc jemalloc; do
      case $what in
        memfit) fn=replay_memfit passes=3 args=(--conf vmm:on) ;;
        memfit-segments) fn=replay_memfit passes=3 args=(--conf vmm:off) ;;
        *) fn=replay_baseline passes=2 args=(--baseline "$what") ;;
      esac
      echo "callgrind: $what $rel" >&2
      (cd "$root" && MEMFIT_REPLAY_STATIC_TLS=1 GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536 \
        valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect="$fn" \
        "$replay" "$rel" --repeat 1 "${args[@]}" >/dev/null 2>"$raw/callgrind.err")
      ir=$(sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$raw/callgrind.err" | tr -d ,)
      echo "$rel $what ${ir:-0} $passes" >>"$raw/callgrind.txt"
    done
  done
  echo "valgrind=$(valgrind --version)" >>"$raw/machine.txt"
fi

mkdir -p "$results"
python3 "$root/benchmarks/replay/render_results.py" "$raw" \
  --json "$results/replay-$date.json" --markdown "$results/replay-$date.md"
echo "wrote $results/replay-$date.md and $results/replay-$date.json" >&2
