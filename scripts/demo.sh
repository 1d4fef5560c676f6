#!/usr/bin/env bash
# The main job, for now: build memfit and replay a bundled trace of a GPT-style
# training run whose sequence length drifts step to step, printing memfit's
# table (peaks, fragmentation, OOMs, time per op against glibc malloc), then the
# same trace with segment merging off, to show what merging saves.
# Usage: bash scripts/demo.sh [TRACE] [extra memfit-replay options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

trace=${1:-benchmarks/traces/gpt_varlen.mftrace}
shift || true
mkdir -p build-release
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BUILD_TESTS=OFF >build-release/configure.log 2>&1 ||
  { cat build-release/configure.log; exit 1; }
cmake --build build-release -j"$(nproc 2>/dev/null || echo 2)" >build-release/build.log 2>&1 ||
  { tail -50 build-release/build.log; exit 1; }

echo "== memfit-replay $trace (virtual backend, against glibc malloc) =="
./build-release/benchmarks/memfit-replay "$trace" --baseline malloc "$@"
echo
echo "== the same trace with merge_segments:false (segments never merged on a miss) =="
./build-release/benchmarks/memfit-replay "$trace" --conf merge_segments:false --repeat 1 "$@"
